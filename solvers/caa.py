"""CAA: pooled difference of means, positives of a concept against every other fitted document."""

from __future__ import annotations

import torch
from actcache.solvers.sufficient_stats import MomentTotals
from torch import Tensor

NORM_FLOOR = 1e-6


def normalize(v: Tensor) -> Tensor:
    """v / max(|v|, 1e-6) along the last axis: the reference's normalisation (a zero vector stays zero)."""
    return v / v.norm(dim=-1, keepdim=True).clamp_min(NORM_FLOOR)


def caa_direction(totals: MomentTotals, concept: int) -> Tensor:
    """Unit CAA vector of `concept`, float32 (d,)."""
    return normalize(totals.diff(concept)).float()


def caa_directions(totals: MomentTotals) -> Tensor:
    """Unit CAA vectors of every concept, float32 (C, d), from one pass of totals."""
    return torch.stack([caa_direction(totals, c) for c in range(totals.n_concepts)])
