"""Defaults of `solve` and `sweep`, in one light module: the settings dataclasses and the command line both read
them (building the CLI's help must not import torch)."""

from __future__ import annotations

__all__ = ["SOLVE_METHODS", "SWEEP_METHODS", "SWEEP_POOLINGS", "GATE_MIN_CAA_COSINE", "GATE_MAX_AUROC_DELTA"]

# heads is skipped with a note when the cache has no attn_z (solvers.job.resolve_methods)
SOLVE_METHODS = ("caa", "subspace", "heads", "ridge", "quality")
SWEEP_METHODS = ("caa", "pca", "logistic", "subspace")
# not plain `mean`: real models put most of a document's token norm on the first token (the attention sink)
SWEEP_POOLINGS = ("last", "mean-skip:1")
# `actcache compare`: a lossy cache passes when every CAA vector keeps this cosine and every held-out AUROC moves
# less than this (issue 9's goal for fp8)
GATE_MIN_CAA_COSINE = 0.999
GATE_MAX_AUROC_DELTA = 0.005
