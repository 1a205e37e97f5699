"""`actcache solve`: concept vectors, head rankings and the quality report of a cache, without the model.

Each (hook, layer) stream is read once (subspace batches beyond the first re-read only their own
positives); the per-(concept, layer) solves run in process or as Ray tasks (`workers > 1`). Memory stays
within `max_memory` (see solvers/memory.py). The driving order is docs/SOLVERS-IMPLEMENTATION.md's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from actcache.solvers.aggregators import AGGREGATORS
from actcache.solvers.errors import SolverInputError
from actcache.solvers.executor import Executor, make_executor, torch_threads
from actcache.solvers.heads import head_write_projection, rank_heads_from_totals, top_write_heads
from actcache.solvers.job_inputs import (
    LabelSpec,
    build_labels,
    check_new_output,
    check_pooling_lengths,
    parse_poolings,
    resolve_device,
    resolve_layers,
)
from actcache.solvers.labels import LabelSets
from actcache.solvers.layer_pass import PassPlan, subspace_batches
from actcache.solvers.layer_solve import (
    VECTOR_METHODS,
    Stream,
    heldout_scores,
    layer_vectors,
    read_layer,
    subspace_eigens,
)
from actcache.solvers.memory import MemoryPlan, pin_malloc_thresholds, plan_memory
from actcache.solvers.pooling import Pooling
from actcache.solvers.quality import concept_quality, middle_layer, nearest_concepts, neuron_alignment, story_statistics
from actcache.solvers.readout import Readout, write_readout
from actcache.solvers.report import triage_report
from actcache.solvers.ridge import ridge_reconstruction
from actcache.solvers.weights import LayerWeights
from torch import Tensor

__all__ = ["CORE_METHODS", "SolveSettings", "SolveResult", "resolve_methods", "solve_cache", "triage_summary"]

CORE_METHODS = ("caa", "subspace", "heads", "ridge", "quality")
# what `all` adds when every concept has pairs; logistic_l1 is left out (its penalty may zero a vector)
ALL_AGGREGATORS = ("mean", "pca", "logistic", "linear", "pca_diff", "pca_center")
TRIAGE_ORDER = ("clean single-neuron", "clean low-dim circuit", "mixed", "fragmented", "contaminated", "redundant")


@dataclass(frozen=True)
class SolveSettings:
    """Everything a solve depends on (the command line's options)."""

    methods: tuple[str, ...] = CORE_METHODS
    layers: str | tuple[int, ...] = "all"
    pooling: str = "last"
    readout: str = "caa"
    aggregators: tuple[str, ...] = ()
    labels: LabelSpec = field(default_factory=LabelSpec)
    max_memory: int | None = None
    device: str = "cpu"
    workers: int = 1
    threads: int | None = 1  # torch CPU threads per worker (None: torch's default); see executor.torch_threads
    quality_cap: int = 256
    eigen_k: int = 5

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("methods", "layers", "pooling", "readout", "aggregators", "max_memory",
                                             "device", "workers", "threads", "quality_cap", "eigen_k")}
        return {**out, "labels": self.labels.to_dict()}


@dataclass(frozen=True)
class SolveResult:
    """Where the files are, what was solved, and the triage."""

    out_dir: Path
    concepts: tuple[str, ...]
    layers: tuple[int, ...]
    methods: tuple[str, ...]
    primary: str
    quality: dict[str, Any]
    evaluation: dict[str, dict[int, dict[str, list[float | None]]]]  # method -> layer -> scores (test split)
    memory: dict[str, int | None]
    seconds: float
    skipped: dict[str, int] = field(default_factory=dict)  # concept -> positives, below --min-positives

    def summary(self) -> str:
        """Readout paths, held-out scores when a split exists, and the triage at the middle layer."""
        vector_methods = [m for m in self.methods if m in VECTOR_METHODS]
        lines = [
            f"solved {len(self.concepts)} concept(s) at layer(s) {', '.join(map(str, self.layers))} "
            f"in {self.seconds:.1f} s",
            f"readout   {self.out_dir / 'readout.safetensors'} ({self.primary}) + readout.json",
        ]
        lines.append(f"methods   {self.out_dir / 'methods'}/{{{','.join(vector_methods)}}}.safetensors")
        if self.quality:
            lines.append(f"quality   {self.out_dir / 'quality.json'}, report {self.out_dir / 'report.md'}")
        scores = self.evaluation.get(self.primary, {})
        for layer, per_layer in scores.items():
            auroc = [a for a in per_layer["auroc"] if a is not None]
            if auroc:
                lines.append(f"held-out  layer {layer}: mean AUROC {sum(auroc) / len(auroc):.3f} over "
                             f"{len(auroc)} concept(s)")
        lines.append(triage_summary(self.quality))
        return "\n".join(lines)


def triage_summary(quality: dict[str, Any], samples: int = 5) -> str:
    """'triage at layer L:' then one line per label with its count and up to `samples` concept names."""
    triaged = {name: q for name, q in quality.items() if "triage" in q}
    if not triaged:
        return "triage    none (add quality to --methods for the triage)"
    mid = next(iter(triaged.values()))["middle_layer"]
    lines = [f"triage at layer {mid}:"]
    for label in TRIAGE_ORDER:
        names = [n for n, q in triaged.items() if q["triage"] == label]
        shown = ", ".join(names[:samples]) + (", ..." if len(names) > samples else "")
        lines.append(f"  {label:<22} {len(names):>3}" + (f"  ({shown})" if names else ""))
    return "\n".join(lines)


def resolve_methods(methods: Sequence[str], readout: str, aggregators: Sequence[str], labels: LabelSets,
                    ) -> tuple[str, ...]:
    """Expand `all`, add --aggregator and --readout methods, and refuse unknown names."""
    known = set(CORE_METHODS) | set(AGGREGATORS)
    out: list[str] = []
    for name in [*methods, *aggregators, readout]:
        if name == "all":
            paired = all(labels.pairs_of(c) for c in range(len(labels.concepts)))
            out += [*CORE_METHODS, *(ALL_AGGREGATORS if paired else ())]
        elif name in known:
            out.append(name)
        else:
            raise SolverInputError(f"unknown method {name!r}: use all or some of {', '.join(sorted(known))}")
    if readout not in VECTOR_METHODS:
        raise SolverInputError(f"--readout {readout!r} gives no vectors: use caa, subspace or an aggregator")
    return tuple(dict.fromkeys(out))


@dataclass
class _Context:
    settings: SolveSettings
    stream: Stream
    pooling: Pooling
    methods: tuple[str, ...]
    plan: PassPlan
    batches: list[tuple[int, ...]] | None
    weights: LayerWeights
    executor: Executor

    @property
    def labels(self) -> LabelSets:
        return self.stream.labels


def solve_cache(cache_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                settings: SolveSettings | None = None) -> SolveResult:
    """Solve a cache into `out_dir` (which must not exist): readouts, quality.json and report.md."""
    from actcache.storage import open_cache

    settings = settings or SolveSettings()
    started = time.perf_counter()
    out = check_new_output(out_dir)
    reader = open_cache(Path(cache_path))
    if "resid_post" not in reader.hooks:
        raise SolverInputError(f"cache {cache_path} has no resid_post activations: rebuild it with --hooks resid_post")
    docs = reader.documents()
    labels = build_labels(docs, settings.labels)
    layers = resolve_layers(settings.layers, reader.layers)
    (pooling,) = parse_poolings([settings.pooling])
    check_pooling_lengths(docs, labels, [pooling])
    methods = resolve_methods(settings.methods, settings.readout, settings.aggregators, labels)
    if "heads" in methods and "attn_z" not in reader.hooks:
        raise SolverInputError(f"cache {cache_path} has no attn_z activations: drop heads or rebuild with attn_z")
    device = resolve_device(settings.device)
    width = reader.width("resid_post")
    n_c = len(labels.concepts)
    plan = PassPlan((pooling,), quality_cap=settings.quality_cap if "quality" in methods else None,
                    pairs=any(m in AGGREGATORS for m in methods))
    longest = max(d.n_tokens for d, f, t in zip(docs, labels.fit, labels.test, strict=True) if f or t)
    n_vectors = sum(m in VECTOR_METHODS for m in methods) * len(layers)
    memory = plan_memory(settings.max_memory, width=width, longest_document=longest,
                         accumulators=_pass_bytes(plan, labels, width), subspace="subspace" in methods,
                         kept=n_vectors * n_c * width * 4 + _weight_bytes(reader, width, methods))
    batches = subspace_batches(range(n_c), width, memory.subspace) if "subspace" in methods else None
    if batches is not None:
        plan = replace(plan, subspace_concepts=batches[0])
    if settings.max_memory is not None:
        pin_malloc_thresholds()
    executor = make_executor(settings.workers)
    ctx = _Context(settings, Stream(reader, labels, device, memory.stream_block), pooling, methods, plan, batches,
                   LayerWeights(reader.model_source), executor)
    try:
        with torch_threads(settings.threads):
            per_layer = {layer: _solve_layer(ctx, layer, width) for layer in layers}
    finally:
        executor.shutdown()
    return _write(ctx, out, per_layer, memory, time.perf_counter() - started)


def _pass_bytes(plan: PassPlan, labels: LabelSets, width: int) -> int:
    """The pass's accumulators, twice the pair store (the paired samples are stacked again to fit)."""
    pairs = PassPlan((), pairs=True).memory_bytes(labels, width) * len(plan.poolings) if plan.pairs else 0
    test = sum(labels.test) * width * 4 * len(plan.poolings)
    return plan.memory_bytes(labels, width) + pairs + test


def _weight_bytes(reader: Any, width: int, methods: Sequence[str]) -> int:
    """W_down (d x d_ff, float32 read + float64 normalised copy) and W_O when those fields are asked for."""
    config = reader.fingerprint.model.get("config", {})
    total = 0
    if "quality" in methods:
        total += width * int(config.get("intermediate_size", 0)) * (4 + 2 * 8)
    if "heads" in methods:
        total += width * reader.width("attn_z") * (4 + 2 * 8)
    return total


@dataclass
class _LayerResult:
    vectors: dict[str, Tensor]  # method -> (C, d)
    fields: list[dict[str, Any]]  # per concept
    evaluation: dict[str, dict[str, list[float | None]]]  # method -> scores


def _solve_layer(ctx: _Context, layer: int, width: int) -> _LayerResult:
    labels, pooling, methods = ctx.labels, ctx.pooling, ctx.methods
    read = read_layer(ctx.stream, "resid_post", layer, width, ctx.plan, test_poolings=(pooling,))
    stats = read.stats
    eigens = None
    if ctx.batches is not None:
        eigens = subspace_eigens(ctx.stream, layer, width, stats, ctx.batches, ctx.executor, ctx.settings.eigen_k)
    wanted = [m for m in methods if m in VECTOR_METHODS]
    solved = layer_vectors(labels, stats, (pooling,), list(dict.fromkeys(["caa", *wanted])), eigens, ctx.executor)
    vectors = {m: solved[(str(pooling), m)] for m in wanted}
    primary = vectors[ctx.settings.readout]
    n_c = len(labels.concepts)
    fields: list[dict[str, Any]] = [{} for _ in range(n_c)]
    if "quality" in methods:
        w_down = ctx.weights.down_proj(layer)
        store = stats.positives[str(pooling)]
        for c in range(n_c):
            docs, pooled = store.vectors(c)
            fields[c].update(story_statistics(pooled, [labels.keys[i] for i in docs], primary[c]))
            fields[c].update(neuron_alignment(primary[c], w_down.tensor, w_down.reason or ""))
    if eigens is not None:
        for c in range(n_c):
            fields[c]["subspace_eigenvalues"] = eigens[c].eigenvalues.tolist()
    if "ridge" in methods:
        for c, ridge in enumerate(ridge_reconstruction(primary, list(labels.concepts))):
            fields[c].update(ridge.to_dict())
    if "heads" in methods:
        _head_fields(ctx, layer, solved[(str(pooling), "caa")], fields)
    evaluation = {}
    if any(labels.test):
        evaluation = {m: heldout_scores(v, read, pooling, stats.moments[str(pooling)], labels)
                      for m, v in vectors.items()}
        for c in range(n_c):
            fields[c]["heldout"] = {k: s[c] for k, s in evaluation[ctx.settings.readout].items()}
    return _LayerResult(vectors, fields, evaluation)


def _head_fields(ctx: _Context, layer: int, caa: Tensor, fields: list[dict[str, Any]]) -> None:
    """Per-head ranking from the attn_z stream of `layer`, and each head's write along the resid CAA vector."""
    reader = ctx.stream.reader
    n_heads, _ = reader.head_shape("attn_z")
    width = reader.width("attn_z")
    plan = PassPlan((ctx.pooling,), squares=True)
    moments = read_layer(ctx.stream, "attn_z", layer, width, plan).stats.moments[str(ctx.pooling)]
    w_o = ctx.weights.o_proj(layer)
    for c in range(len(ctx.labels.concepts)):
        fields[c].update(rank_heads_from_totals(moments, c, n_heads).to_dict())
        if w_o.tensor is None:
            fields[c].update(top_write_heads=None, write_reason=w_o.reason)
        else:
            projection = head_write_projection(moments.diff(c).cpu(), w_o.tensor, caa[c], n_heads)
            fields[c].update(top_write_heads=top_write_heads(projection), write_reason=None)


def _write(ctx: _Context, out: Path, per_layer: dict[int, _LayerResult], memory: MemoryPlan,
           seconds: float) -> SolveResult:
    labels, settings = ctx.labels, ctx.settings
    layers = tuple(per_layer)
    width = next(iter(per_layer.values())).vectors[settings.readout].shape[1]
    readouts = {
        m: Readout(labels.concepts, layers, width, {layer: r.vectors[m] for layer, r in per_layer.items()})
        for m in next(iter(per_layer.values())).vectors
    }
    quality = _quality(ctx, per_layer)
    write_readout(out, readouts, primary=settings.readout, quality=quality or None,
                  report=triage_report(quality) if "quality" in ctx.methods else None)
    evaluation = {m: {layer: r.evaluation[m] for layer, r in per_layer.items() if m in r.evaluation}
                  for m in readouts}
    passes = {"subspace_passes": len(ctx.batches) if ctx.batches is not None else 0}
    return SolveResult(out, labels.concepts, layers, ctx.methods, settings.readout, quality,
                       {m: e for m, e in evaluation.items() if e}, {**memory.to_dict(), **passes}, seconds,
                       dict(labels.skipped))


def _quality(ctx: _Context, per_layer: dict[int, _LayerResult]) -> dict[str, Any]:
    """quality.json: per concept, concept_quality (with triage) when quality ran, else the per-layer fields."""
    labels = ctx.labels
    if not any(r.fields[0] for r in per_layer.values()):
        return {}
    mid = middle_layer(list(per_layer))
    primary = per_layer[mid].vectors[ctx.settings.readout]
    out: dict[str, Any] = {}
    for c, name in enumerate(labels.concepts):
        rows = {layer: r.fields[c] for layer, r in per_layer.items()}
        if "quality" in ctx.methods:
            nearest = nearest_concepts(primary, labels.concepts, c)
            out[name] = concept_quality(rows, nearest, len(labels.positives(c)))
        else:
            out[name] = {"n_positive_stories": len(labels.positives(c)),
                         "layers": {str(layer): q for layer, q in rows.items()}}
    return out

