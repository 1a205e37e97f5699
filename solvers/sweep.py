"""`actcache sweep`: a grid of variants (poolings x vector methods x layers) from one read of each stream.

Every (hook, layer) stream is read once and feeds every pooling's accumulators (solvers/run_setup.py, the
setup path `solve` shares); the subspace eigenpairs are computed once per (concept, layer) and oriented per
pooling. One readout directory per variant (`variants/<method>__pool-<pooling>`), plus `comparison.json` /
`comparison.md` (held-out AUROC and balanced accuracy when the cache has a test split, then the cosine between
variants: the matrix up to 8 variants, else each variant's nearest ones) and `cosine.csv` (the full matrix).
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from actcache.solvers.defaults import SWEEP_METHODS, SWEEP_POOLINGS
from actcache.solvers.readout import Readout, write_readout
from actcache.solvers.run_setup import LayerVariants, RunSettings, open_run, plan_run, run_layers

__all__ = ["SweepSettings", "SweepResult", "sweep_cache", "variant_name", "DEFAULT_POOLINGS", "FULL_TABLE_ROWS"]

DEFAULT_POOLINGS = SWEEP_POOLINGS
FULL_TABLE_ROWS = 8  # above this many variants the cosine table is summarised (full matrix in cosine.csv)
NEAREST = 3


@dataclass(frozen=True, kw_only=True)
class SweepSettings(RunSettings):
    """Everything a sweep depends on: the shared options plus the grid."""

    poolings: tuple[str, ...] = DEFAULT_POOLINGS
    methods: tuple[str, ...] = SWEEP_METHODS


def variant_name(method: str, pooling: str) -> str:
    """Folder name of a variant, the pooling marked so no two variants read alike: e.g. `caa__pool-last`,
    `mean__pool-mean` (aggregator mean, pooling mean), `pca__pool-mean-skip-1`."""
    return f"{method}__pool-{pooling.replace(':', '-')}"


@dataclass(frozen=True)
class SweepResult:
    out_dir: Path
    variants: tuple[str, ...]
    layers: tuple[int, ...]
    concepts: tuple[str, ...]
    cosine: dict[str, dict[str, float]]  # variant -> variant -> mean cosine over concepts and layers
    heldout: dict[str, dict[int, dict[str, float | None]]]  # variant -> layer -> mean auroc / balanced accuracy
    seconds: float
    notes: tuple[str, ...] = field(default=())  # warnings (e.g. a pooling dominated by one position)
    memory: dict[str, int | None] = field(default_factory=dict)  # the memory plan (MemoryPlan.to_dict)

    def summary(self) -> str:
        return (f"swept {len(self.variants)} variants x {len(self.layers)} layer(s) x {len(self.concepts)} "
                f"concept(s) in {self.seconds:.1f} s\nreadouts  {self.out_dir / 'variants'}/<variant>/"
                f"readout.safetensors\n" + comparison_table(self) + "".join(f"note: {n}\n" for n in self.notes))


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def comparison_table(result: SweepResult) -> str:
    """Markdown: held-out scores per variant and layer (when a split exists), then the cosine matrix."""
    lines: list[str] = []
    if result.heldout:
        lines += ["| variant | " + " | ".join(f"L{layer} AUROC / bal. acc." for layer in result.layers) + " |",
                  "|---|" + "---|" * len(result.layers)]
        for v in result.variants:
            cells = []
            for layer in result.layers:
                s = result.heldout[v][layer]
                cells.append(" / ".join("-" if s[k] is None else f"{s[k]:.3f}" for k in ("auroc", "balanced_accuracy")))
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += cosine_table(result.variants, result.cosine)
    return "\n".join(lines) + "\n"


def cosine_table(variants: tuple[str, ...], cosine: dict[str, dict[str, float]]) -> list[str]:
    """Markdown lines: the full cosine matrix up to FULL_TABLE_ROWS variants, else each variant's NEAREST
    nearest variants (the full matrix is in cosine.csv)."""
    if len(variants) <= FULL_TABLE_ROWS:
        lines = ["cosine between variants (mean over concepts and layers):", "",
                 "| | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
        return lines + [f"| {a} | " + " | ".join(f"{cosine[a][b]:.3f}" for b in variants) + " |" for a in variants]
    lines = [f"nearest variants by cosine (mean over concepts and layers; all {len(variants)} x {len(variants)} "
             f"in cosine.csv):", "", "| variant | " + " | ".join(f"#{k + 1}" for k in range(NEAREST)) + " |",
             "|---|" + "---|" * NEAREST]
    for a in variants:
        near = sorted((b for b in variants if b != a), key=lambda b: -cosine[a][b])[:NEAREST]
        lines.append(f"| {a} | " + " | ".join(f"{b} {cosine[a][b]:.3f}" for b in near) + " |")
    return lines


def sweep_cache(cache_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                settings: SweepSettings | None = None) -> SweepResult:
    """Compute every (pooling, method) variant at every layer with one read per stream; write and compare."""
    settings = settings or SweepSettings()
    started = time.perf_counter()
    inputs = open_run(cache_path, out_dir, settings)
    run = plan_run(inputs, settings, settings.poolings, settings.methods)
    per_layer, notes = run_layers(run, lambda variants, executor: variants)
    result = _write(inputs.out, per_layer, inputs.labels.concepts, [str(p) for p in run.poolings], run.methods,
                    notes, time.perf_counter() - started, settings)
    return replace(result, memory=run.memory.to_dict())


def _write(out: Path, per_layer: dict[int, LayerVariants], concepts: tuple[str, ...], poolings: list[str],
           methods: tuple[str, ...], notes: list[str], seconds: float, settings: SweepSettings) -> SweepResult:
    """Write under a temporary sibling renamed at the end (storage.atomic_dir): complete or absent."""
    from actcache.storage.atomic_dir import atomic_dir

    with atomic_dir(out, overwrite=settings.overwrite) as tmp:
        result = _write_into(tmp, per_layer, concepts, poolings, methods, notes, seconds, settings)
    return SweepResult(out, *result)


def _write_into(out: Path, per_layer: dict[int, LayerVariants], concepts: tuple[str, ...], poolings: list[str],
                methods: tuple[str, ...], notes: list[str], seconds: float, settings: SweepSettings,
                ) -> tuple[Any, ...]:
    first = next(iter(per_layer.values()))
    layers = tuple(per_layer)
    keys = [(p, m) for p in poolings for m in methods]
    names = {k: variant_name(k[1], k[0]) for k in keys}
    width = first.vectors[keys[0]].shape[1]
    (out / "variants").mkdir()
    for key in keys:
        readout = Readout(concepts, layers, width, {layer: per_layer[layer].vectors[key] for layer in layers})
        write_readout(out / "variants" / names[key], {key[1]: readout}, primary=key[1])
    cosine = {
        names[a]: {names[b]: float(torch.stack([(v.vectors[a] * v.vectors[b]).sum(dim=1)
                                                for v in per_layer.values()]).mean()) for b in keys}
        for a in keys
    }
    scored = bool(first.scores)
    heldout = {
        names[k]: {layer: {s: _mean(per_layer[layer].scores[k][s]) for s in ("auroc", "balanced_accuracy")}
                   for layer in layers}
        for k in keys
    } if scored else {}
    variants = tuple(names[k] for k in keys)
    fields = (variants, layers, concepts, cosine, heldout, seconds, tuple(notes))
    per_concept = {
        names[k]: {str(layer): per_layer[layer].scores[k] for layer in layers} for k in keys
    } if scored else {}
    (out / "comparison.json").write_text(json.dumps({
        "variants": list(variants), "layers": list(layers), "concepts": list(concepts),
        "cosine": cosine, "heldout_mean": {v: {str(k): s for k, s in d.items()} for v, d in heldout.items()},
        "heldout_per_concept": per_concept, "seconds": seconds, "notes": notes,
        "settings": settings.to_dict(),
    }, indent=2) + "\n")
    with (out / "cosine.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["variant", *variants])
        writer.writerows([[a, *(f"{cosine[a][b]:.6f}" for b in variants)] for a in variants])
    table = comparison_table(SweepResult(out, *fields))
    (out / "comparison.md").write_text("# Sweep comparison\n\n" + table + "".join(f"\nnote: {n}" for n in notes))
    return fields
