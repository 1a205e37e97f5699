"""`actcache solve`: concept vectors, head rankings and the quality report of a cache, without the model.

A solve is a sweep with one pooling (solvers/run_setup.py: one setup path, one memory formula). Each
(hook, layer) stream is read once (subspace batches beyond the first re-read only their own
positives); the per-(concept, layer) solves run in process or as Ray tasks (`workers > 1`). Memory stays
within `max_memory` (see solvers/memory_budget.py). The driving order is docs/SOLVERS-IMPLEMENTATION.md's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actcache.solvers.aggregators import AGGREGATORS
from actcache.solvers.defaults import SOLVE_METHODS
from actcache.solvers.errors import SolverInputError
from actcache.solvers.heads import head_write_projection, rank_heads_from_totals, top_write_heads
from actcache.solvers.labels import LabelSets
from actcache.solvers.layer_pass import PassPlan
from actcache.solvers.layer_solve import VECTOR_METHODS, read_layer
from actcache.solvers.layer_weights import LayerWeights
from actcache.solvers.pooling import Pooling
from actcache.solvers.quality import (
    TRIAGE_ORDER,
    concept_quality,
    middle_layer,
    nearest_concepts,
    neuron_alignment,
    story_statistics,
)
from actcache.solvers.readout import Readout, write_readout
from actcache.solvers.report import outlier_texts, triage_report
from actcache.solvers.ridge import ridge_reconstruction
from actcache.solvers.run_setup import LayerVariants, RunPlan, RunSettings, open_run, plan_run, run_layers
from actcache.storage.layout import HOOKS
from torch import Tensor

__all__ = ["CORE_METHODS", "SolveSettings", "SolveResult", "resolve_methods", "solve_cache", "triage_summary"]

CORE_METHODS = SOLVE_METHODS
# what `all` adds when every concept has pairs; logistic_l1 is left out (its penalty may zero a vector)
ALL_AGGREGATORS = ("mean", "pca", "logistic", "linear", "pca_diff", "pca_center")


@dataclass(frozen=True, kw_only=True)
class SolveSettings(RunSettings):
    """Everything a solve depends on (the command line's options): the shared ones plus these."""

    methods: tuple[str, ...] = CORE_METHODS  # as default (or `all`), heads is skipped with a note without attn_z
    pooling: str = "last"
    readout: str = "caa"
    aggregators: tuple[str, ...] = ()
    quality_cap: int = 256


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
    notes: tuple[str, ...] = ()  # what was skipped or looks suspicious, printed with the summary

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
        lines += [f"note      {n}" for n in self.notes]
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
                    hooks: Sequence[str] = HOOKS) -> tuple[tuple[str, ...], list[str]]:
    """Expand `all`, add --aggregator and --readout methods, refuse unknown names; returns the methods and
    notes. `heads` needs attn_z: chosen by name on a cache without it, it is an error; in the default
    methods or `all`, it is skipped with a note."""
    known = set(CORE_METHODS) | set(AGGREGATORS)
    out: list[str] = []
    implicit = tuple(methods) == CORE_METHODS or "all" in methods
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
    notes = []
    if "heads" in out and "attn_z" not in hooks:
        if not implicit:
            raise SolverInputError("the cache has no attn_z activations: drop heads from --methods or rebuild the "
                                   "cache with --hooks resid_post,attn_z")
        out = [m for m in out if m != "heads"]
        notes.append("heads skipped: the cache has no attn_z activations (rebuild with --hooks resid_post,attn_z "
                     "for the per-head ranking)")
    return tuple(dict.fromkeys(out)), notes


@dataclass
class _Context:
    settings: SolveSettings
    run: RunPlan
    methods: tuple[str, ...]
    weights: LayerWeights

    @property
    def labels(self) -> LabelSets:
        return self.run.labels

    @property
    def pooling(self) -> Pooling:
        return self.run.poolings[0]


def solve_cache(cache_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                settings: SolveSettings | None = None) -> SolveResult:
    """Solve a cache into `out_dir` (new, or replaced with `overwrite`): readouts, quality.json and report.md.

    A sweep with one pooling (solvers.run_setup), plus the quality, ridge and head fields of that pooling."""
    settings = settings or SolveSettings()
    started = time.perf_counter()
    inputs = open_run(cache_path, out_dir, settings)
    methods, notes = resolve_methods(settings.methods, settings.readout, settings.aggregators, inputs.labels,
                                     inputs.reader.hooks)
    vector_methods = [m for m in methods if m in VECTOR_METHODS]
    run = plan_run(inputs, settings, (settings.pooling,), ["caa", *vector_methods],
                   quality_cap=settings.quality_cap if "quality" in methods else None,
                   kept=_weight_bytes(inputs.reader, inputs.width, methods))
    ctx = _Context(settings, run, methods, LayerWeights(inputs.reader.model_source))
    per_layer, warnings = run_layers(run, lambda variants, executor: _solve_layer(ctx, variants))
    return _write(ctx, per_layer, [*notes, *warnings], time.perf_counter() - started)


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


def _solve_layer(ctx: _Context, variants: LayerVariants) -> _LayerResult:
    labels, name, layer = ctx.labels, str(ctx.pooling), variants.layer
    stats = variants.read.stats
    vectors = {m: variants.vectors[(name, m)] for m in ctx.methods if m in VECTOR_METHODS}
    primary = vectors[ctx.settings.readout]
    n_c = len(labels.concepts)
    fields: list[dict[str, Any]] = [{} for _ in range(n_c)]
    if "quality" in ctx.methods:
        w_down = ctx.weights.down_proj(layer)
        store = stats.positives[name]
        for c in range(n_c):
            docs, pooled = store.vectors(c)
            fields[c].update(story_statistics(pooled, [labels.keys[i] for i in docs], primary[c]))
            fields[c].update(neuron_alignment(primary[c], w_down.tensor, w_down.reason or ""))
    if variants.eigens is not None:
        for c in range(n_c):
            fields[c]["subspace_eigenvalues"] = variants.eigens[c].eigenvalues.tolist()
    if "ridge" in ctx.methods:
        for c, ridge in enumerate(ridge_reconstruction(primary, list(labels.concepts))):
            fields[c].update(ridge.to_dict())
    if "heads" in ctx.methods:
        _head_fields(ctx, layer, variants.vectors[(name, "caa")], fields)
    evaluation = {m: variants.scores[(name, m)] for m in vectors} if variants.scores else {}
    if evaluation:
        for c in range(n_c):
            fields[c]["heldout"] = {k: s[c] for k, s in evaluation[ctx.settings.readout].items()}
    return _LayerResult(vectors, fields, evaluation)


def _head_fields(ctx: _Context, layer: int, caa: Tensor, fields: list[dict[str, Any]]) -> None:
    """Per-head ranking from the attn_z stream of `layer`, and each head's write along the resid CAA vector."""
    reader = ctx.run.inputs.reader
    n_heads, _ = reader.head_shape("attn_z")
    width = reader.width("attn_z")
    plan = PassPlan((ctx.pooling,), squares=True)
    moments = read_layer(ctx.run.stream, "attn_z", layer, width, plan).stats.moments[str(ctx.pooling)]
    w_o = ctx.weights.o_proj(layer)
    for c in range(len(ctx.labels.concepts)):
        fields[c].update(rank_heads_from_totals(moments, c, n_heads).to_dict())
        if w_o.tensor is None:
            fields[c].update(top_write_heads=None, write_reason=w_o.reason)
        else:
            projection = head_write_projection(moments.diff(c).cpu(), w_o.tensor, caa[c], n_heads)
            fields[c].update(top_write_heads=top_write_heads(projection), write_reason=None)


def _write(ctx: _Context, per_layer: dict[int, _LayerResult], notes: list[str], seconds: float) -> SolveResult:
    labels, settings, out = ctx.labels, ctx.settings, ctx.run.inputs.out
    layers = tuple(per_layer)
    width = next(iter(per_layer.values())).vectors[settings.readout].shape[1]
    readouts = {
        m: Readout(labels.concepts, layers, width, {layer: r.vectors[m] for layer, r in per_layer.items()})
        for m in next(iter(per_layer.values())).vectors
    }
    quality = _quality(ctx, per_layer)
    write_readout(out, readouts, primary=settings.readout, quality=quality or None,
                  report=_report(ctx, quality) if "quality" in ctx.methods else None, overwrite=settings.overwrite)
    evaluation = {m: {layer: r.evaluation[m] for layer, r in per_layer.items() if m in r.evaluation}
                  for m in readouts}
    batches = ctx.run.batches
    passes = {"subspace_passes": len(batches) if batches is not None else 0}
    return SolveResult(out, labels.concepts, layers, ctx.methods, settings.readout, quality,
                       {m: e for m, e in evaluation.items() if e}, {**ctx.run.memory.to_dict(), **passes}, seconds,
                       dict(labels.skipped), tuple(notes))


def _report(ctx: _Context, quality: dict[str, Any]) -> str:
    """report.md, outliers quoted from the cache's texts."""
    texts = outlier_texts(ctx.run.inputs.reader, quality)
    return triage_report(quality, texts=texts, method=ctx.settings.readout, pooling=str(ctx.pooling))


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

