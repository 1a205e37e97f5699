"""The one setup path of `solve` and `sweep`: a solve is a sweep with one pooling (plus the quality fields).

`open_run` checks the cache, the output folder, the labels and the layers before anything is read;
`plan_run` parses the poolings, refuses what cannot work and plans the memory with one formula
(`pass_bytes`); `run_layers` reads each (hook, layer) stream once and computes every (pooling, method)
vector, then hands each layer to the caller.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from actcache.solvers.aggregators import AGGREGATORS
from actcache.solvers.errors import SolverInputError
from actcache.solvers.executor import Executor, make_executor, torch_threads
from actcache.solvers.job_inputs import (
    LabelSpec,
    build_labels,
    check_output,
    check_pairs,
    check_pooling_lengths,
    parse_poolings,
    resolve_layers,
)
from actcache.solvers.labels import LabelSets
from actcache.solvers.layer_pass import PassPlan, subspace_batches
from actcache.solvers.layer_solve import (
    VECTOR_METHODS,
    LayerRead,
    Stream,
    heldout_scores,
    layer_vectors,
    read_layer,
    subspace_eigens,
)
from actcache.solvers.memory_budget import MemoryPlan, pin_malloc_thresholds, plan_memory, ray_task_bytes
from actcache.solvers.pooling import Pooling
from actcache.solvers.subspace import SubspaceEigen
from actcache.solvers.sufficient_stats import PositionShare
from actcache.storage.devices import resolve_device
from actcache.storage.selection import model_layer_count
from torch import Tensor

if TYPE_CHECKING:
    from actcache.storage import CacheReader, Document

__all__ = ["RunSettings", "RunInputs", "RunPlan", "LayerVariants", "open_run", "plan_run", "pass_bytes",
           "run_layers", "pooling_warnings", "DOMINANT_SHARE"]

T = TypeVar("T")
Variant = tuple[str, str]  # (pooling name, method)


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """The options `solve` and `sweep` share (their command lines' common flags)."""

    layers: str | tuple[int, ...] = "all"
    labels: LabelSpec = field(default_factory=LabelSpec)
    max_memory: int | None = None
    device: str = "cpu"
    workers: int = 1
    threads: int | None = 1  # torch CPU threads per worker (None: torch's default); see executor.torch_threads
    eigen_k: int = 5
    overwrite: bool = False  # replace an existing output folder (only a solve/sweep output or an empty one)

    def to_dict(self) -> dict[str, Any]:
        """Every option, JSON-ready (the labels as their own dict)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**out, "labels": self.labels.to_dict()}


@dataclass(frozen=True)
class RunInputs:
    """What the checks give before any activation is read."""

    out: Path
    reader: CacheReader
    docs: list[Document]
    labels: LabelSets
    layers: tuple[int, ...]
    width: int


def open_run(cache_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
             settings: RunSettings) -> RunInputs:
    """Open the cache and check the output folder, the labels and the layers (one line per problem)."""
    from actcache.storage import open_cache

    out = check_output(out_dir, settings.overwrite)
    reader = open_cache(cache_path)
    if "resid_post" not in reader.hooks:
        raise SolverInputError(f"cache {cache_path} has no resid_post activations: rebuild it with --hooks resid_post")
    docs = reader.documents()
    labels = build_labels(docs, settings.labels)
    layers = resolve_layers(settings.layers, reader.layers, model_layer_count(reader.fingerprint))
    return RunInputs(out, reader, docs, labels, layers, reader.width("resid_post"))


@dataclass(frozen=True)
class RunPlan:
    """How the layers will be read and solved: poolings, vector methods, the pass, the memory and batches."""

    inputs: RunInputs
    settings: RunSettings
    poolings: tuple[Pooling, ...]
    methods: tuple[str, ...]  # vector methods, in order
    plan: PassPlan
    memory: MemoryPlan
    batches: list[tuple[int, ...]] | None  # subspace concept batches (None: no subspace)
    stream: Stream

    @property
    def labels(self) -> LabelSets:
        return self.inputs.labels


def pass_bytes(plan: PassPlan, labels: LabelSets, width: int) -> int:
    """The accumulators of one pass, the paired samples once more (stacked per concept to fit) and the
    pooled held-out documents: the one formula of what a (hook, layer) pass holds besides the stream."""
    pairs = PassPlan((), pairs=True).memory_bytes(labels, width) * len(plan.poolings) if plan.pairs else 0
    test = sum(labels.test) * width * 4 * len(plan.poolings)
    return plan.memory_bytes(labels, width) + pairs + test


def plan_run(inputs: RunInputs, settings: RunSettings, poolings: Sequence[str], methods: Sequence[str], *,
             quality_cap: int | None = None, kept: int = 0) -> RunPlan:
    """Plan reading every layer for `poolings` x vector `methods`; `quality_cap` keeps pooled positives for
    the quality fields, `kept` is what the caller holds beyond the vectors (weights)."""
    labels, width, docs = inputs.labels, inputs.width, inputs.docs
    unknown = [m for m in methods if m not in VECTOR_METHODS]
    if unknown or not methods:
        raise SolverInputError(f"method(s) {unknown} give no vectors: use some of {', '.join(VECTOR_METHODS)}")
    methods = tuple(dict.fromkeys(methods))
    parsed = parse_poolings(poolings)
    check_pooling_lengths(docs, labels, parsed)
    check_pairs(labels, methods)
    plan = PassPlan(parsed, quality_cap=quality_cap, pairs=any(m in AGGREGATORS for m in methods))
    longest = max(d.n_tokens for d, f, t in zip(docs, labels.fit, labels.test, strict=True) if f or t)
    n_c = len(labels.concepts)
    vectors = len(parsed) * len(methods) * len(inputs.layers) * n_c * width * 4
    subspace = "subspace" in methods
    pair_rows = max(len(labels.pairs_of(c)) for c in range(n_c)) if plan.pairs else 0
    memory = plan_memory(settings.max_memory, width=width, longest_document=longest,
                         accumulators=pass_bytes(plan, labels, width), subspace=subspace, kept=vectors + kept,
                         workers=settings.workers,
                         task=ray_task_bytes(width, subspace=subspace, pair_rows=pair_rows))
    batches = subspace_batches(range(n_c), width, memory.subspace) if subspace else None
    if batches is not None:
        plan = PassPlan(parsed, quality_cap=quality_cap, pairs=plan.pairs, subspace_concepts=batches[0])
    stream = Stream(inputs.reader, labels, resolve_device(settings.device), memory.stream_block)
    return RunPlan(inputs, settings, parsed, methods, plan, memory, batches, stream)


@dataclass(frozen=True)
class LayerVariants:
    """One layer read and solved: the pass, every (pooling, method) vector and its held-out scores."""

    layer: int
    read: LayerRead
    vectors: dict[Variant, Tensor]  # (pooling name, method) -> unit rows (C, d) float32
    eigens: dict[int, SubspaceEigen] | None  # concept -> subspace eigenpairs (None: no subspace)
    scores: dict[Variant, dict[str, list[float | None]]]  # empty without a test split


def run_layers(run: RunPlan, each: Callable[[LayerVariants, Executor], T]) -> tuple[dict[int, T], list[str]]:
    """Read and solve every layer (one read per stream), calling `each` per layer while the executor and the
    thread setting are live; returns layer -> what `each` returned, and warnings (`pooling_warnings`)."""
    settings, labels = run.settings, run.labels
    budgeted = settings.max_memory is not None
    if budgeted:
        pin_malloc_thresholds()
    executor = make_executor(settings.workers, pin_malloc=budgeted)
    out: dict[int, T] = {}
    shares: dict[int, dict[str, PositionShare]] = {}
    try:
        with torch_threads(settings.threads):
            for layer in run.inputs.layers:
                read = read_layer(run.stream, "resid_post", layer, run.inputs.width, run.plan,
                                  test_poolings=run.poolings)
                eigens = None
                if run.batches is not None:
                    eigens = subspace_eigens(run.stream, layer, run.inputs.width, read.stats, run.batches,
                                             executor, settings.eigen_k)
                vectors = layer_vectors(labels, read.stats, run.poolings, run.methods, eigens, executor)
                by_name = {str(p): p for p in run.poolings}
                scores = {
                    (p, m): heldout_scores(v, read, by_name[p], read.stats.moments[p], labels)
                    for (p, m), v in vectors.items()
                } if any(labels.test) else {}
                shares[layer] = read.stats.position_share
                out[layer] = each(LayerVariants(layer, read, vectors, eigens, scores), executor)
    finally:
        executor.shutdown()
    return out, pooling_warnings(run.poolings, shares)


DOMINANT_SHARE = 0.5  # a position carrying more than half the summed token norms (mean over documents)


def pooling_warnings(poolings: Sequence[Pooling], shares: dict[int, dict[str, PositionShare]],
                     threshold: float = DOMINANT_SHARE) -> list[str]:
    """One warning per averaging pooling where one token position carries more than `threshold` of the summed
    token norms at some layer (the attention sink, usually position 0), naming it and the pooling to use."""
    out = []
    for pooling in poolings:
        found = {layer: s[str(pooling)].dominant(threshold) for layer, s in shares.items() if str(pooling) in s}
        hits = {layer: d for layer, d in found.items() if d is not None}
        if not hits:
            continue
        position = max(set(p for p, _ in hits.values()), key=[p for p, _ in hits.values()].count)
        worst = max(share for p, share in hits.values() if p == position)
        better = (f"span:{position + 1}:{pooling.stop}" if position + 1 < pooling.stop else "last") \
            if pooling.kind == "span" else f"mean-skip:{position + 1}"
        layers = ", ".join(str(layer) for layer, (p, _) in hits.items() if p == position)
        out.append(f"pooling {pooling}: token position {position} carries up to {worst:.0%} of the summed token "
                   f"norms (mean over documents) at layer(s) {layers}, so the pooled vector is mostly that token; "
                   f"use --pooling {better}")
    return out
