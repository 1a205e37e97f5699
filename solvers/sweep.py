"""`actcache sweep`: a grid of variants (poolings x vector methods x layers) from one read of each stream.

Every (hook, layer) stream is read once and feeds every pooling's accumulators; the subspace eigenpairs
are computed once per (concept, layer) and oriented per pooling. One readout directory per variant, plus
`comparison.json` / `comparison.md`: cosine between variants and, when the cache has a test split, each
variant's held-out AUROC and balanced accuracy.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from actcache.solvers.aggregators import AGGREGATORS
from actcache.solvers.errors import SolverInputError
from actcache.solvers.executor import make_executor, torch_threads
from actcache.solvers.job_inputs import (
    LabelSpec,
    build_labels,
    check_new_output,
    check_pooling_lengths,
    parse_poolings,
    resolve_device,
    resolve_layers,
)
from actcache.solvers.layer_pass import PassPlan, subspace_batches
from actcache.solvers.layer_solve import (
    VECTOR_METHODS,
    Stream,
    heldout_scores,
    layer_vectors,
    read_layer,
    subspace_eigens,
)
from actcache.solvers.memory import pin_malloc_thresholds, plan_memory
from actcache.solvers.readout import Readout, write_readout
from torch import Tensor

__all__ = ["SweepSettings", "SweepResult", "sweep_cache", "variant_name"]


@dataclass(frozen=True)
class SweepSettings:
    poolings: tuple[str, ...] = ("last", "mean")
    methods: tuple[str, ...] = ("caa", "pca", "logistic", "subspace")
    layers: str | tuple[int, ...] = "all"
    labels: LabelSpec = field(default_factory=LabelSpec)
    max_memory: int | None = None
    device: str = "cpu"
    workers: int = 1
    threads: int | None = 1
    eigen_k: int = 5


def variant_name(method: str, pooling: str) -> str:
    """Directory name of a variant, e.g. caa__mean-skip-4."""
    return f"{method}__{pooling.replace(':', '-')}"


@dataclass(frozen=True)
class SweepResult:
    out_dir: Path
    variants: tuple[str, ...]
    layers: tuple[int, ...]
    concepts: tuple[str, ...]
    cosine: dict[str, dict[str, float]]  # variant -> variant -> mean cosine over concepts and layers
    heldout: dict[str, dict[int, dict[str, float | None]]]  # variant -> layer -> mean auroc / balanced accuracy
    seconds: float

    def summary(self) -> str:
        return (f"swept {len(self.variants)} variants x {len(self.layers)} layer(s) x {len(self.concepts)} "
                f"concept(s) in {self.seconds:.1f} s\nreadouts  {self.out_dir / 'variants'}/<variant>/"
                f"readout.safetensors\n" + comparison_table(self))


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
    lines += ["cosine between variants (mean over concepts and layers):", "",
              "| | " + " | ".join(result.variants) + " |", "|---|" + "---|" * len(result.variants)]
    for a in result.variants:
        lines.append(f"| {a} | " + " | ".join(f"{result.cosine[a][b]:.3f}" for b in result.variants) + " |")
    return "\n".join(lines) + "\n"


def sweep_cache(cache_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                settings: SweepSettings | None = None) -> SweepResult:
    """Compute every (pooling, method) variant at every layer with one read per stream; write and compare."""
    from actcache.storage import open_cache

    settings = settings or SweepSettings()
    started = time.perf_counter()
    out = check_new_output(out_dir)
    unknown = [m for m in settings.methods if m not in VECTOR_METHODS]
    if unknown or not settings.methods:
        raise SolverInputError(f"sweep method(s) {unknown} give no vectors: use some of {', '.join(VECTOR_METHODS)}")
    reader = open_cache(Path(cache_path))
    docs = reader.documents()
    labels = build_labels(docs, settings.labels)
    layers = resolve_layers(settings.layers, reader.layers)
    poolings = parse_poolings(settings.poolings)
    check_pooling_lengths(docs, labels, poolings)
    methods = tuple(dict.fromkeys(settings.methods))
    width = reader.width("resid_post")
    n_c = len(labels.concepts)
    plan = PassPlan(poolings, pairs=any(m in AGGREGATORS for m in methods))
    longest = max(d.n_tokens for d, f, t in zip(docs, labels.fit, labels.test, strict=True) if f or t)
    test_bytes = sum(labels.test) * width * 4 * len(poolings)
    memory = plan_memory(settings.max_memory, width=width, longest_document=longest,
                         accumulators=2 * plan.memory_bytes(labels, width) + test_bytes,
                         subspace="subspace" in methods,
                         kept=len(poolings) * len(methods) * len(layers) * n_c * width * 4)
    batches = subspace_batches(range(n_c), width, memory.subspace) if "subspace" in methods else None
    if batches is not None:
        plan = PassPlan(poolings, pairs=plan.pairs, subspace_concepts=batches[0])
    stream = Stream(reader, labels, resolve_device(settings.device), memory.stream_block)
    if settings.max_memory is not None:
        pin_malloc_thresholds()
    executor = make_executor(settings.workers)
    vectors: dict[int, dict[tuple[str, str], Tensor]] = {}
    scores: dict[int, dict[tuple[str, str], dict[str, list[float | None]]]] = {}
    try:
        with torch_threads(settings.threads):
            for layer in layers:
                read = read_layer(stream, "resid_post", layer, width, plan, test_poolings=poolings)
                eigens = None
                if batches is not None:
                    eigens = subspace_eigens(stream, layer, width, read.stats, batches, executor, settings.eigen_k)
                vectors[layer] = layer_vectors(labels, read.stats, poolings, methods, eigens, executor)
                if any(labels.test):
                    scores[layer] = {
                        (p, m): heldout_scores(v, read, next(q for q in poolings if str(q) == p),
                                               read.stats.moments[p], labels)
                        for (p, m), v in vectors[layer].items()
                    }
    finally:
        executor.shutdown()
    return _write(out, labels.concepts, layers, width, [str(p) for p in poolings], methods, vectors, scores,
                  time.perf_counter() - started, settings)


def _write(out: Path, *args: Any) -> SweepResult:
    """Write under a hidden temporary sibling renamed at the end: the sweep's output is complete or absent."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        result = _write_into(tmp, *args)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return replace(result, out_dir=out)


def _write_into(out: Path, concepts: tuple[str, ...], layers: tuple[int, ...], width: int, poolings: list[str],
           methods: tuple[str, ...], vectors: dict[int, dict[tuple[str, str], Tensor]],
           scores: dict[int, dict[tuple[str, str], dict[str, list[float | None]]]], seconds: float,
           settings: SweepSettings) -> SweepResult:
    keys = [(p, m) for p in poolings for m in methods]
    names = {k: variant_name(k[1], k[0]) for k in keys}
    (out / "variants").mkdir(parents=True)
    for key in keys:
        readout = Readout(concepts, layers, width, {layer: vectors[layer][key] for layer in layers})
        write_readout(out / "variants" / names[key], {key[1]: readout}, primary=key[1])
    cosine = {
        names[a]: {names[b]: float(torch.stack([(vectors[layer][a] * vectors[layer][b]).sum(dim=1)
                                                for layer in layers]).mean()) for b in keys}
        for a in keys
    }
    heldout = {
        names[k]: {layer: {s: _mean(scores[layer][k][s]) for s in ("auroc", "balanced_accuracy")}
                   for layer in layers}
        for k in keys
    } if scores else {}
    result = SweepResult(out, tuple(names[k] for k in keys), layers, concepts, cosine, heldout, seconds)
    per_concept = {
        names[k]: {str(layer): scores[layer][k] for layer in layers} for k in keys
    } if scores else {}
    (out / "comparison.json").write_text(json.dumps({
        "variants": list(result.variants), "layers": list(layers), "concepts": list(concepts),
        "cosine": cosine, "heldout_mean": {v: {str(k): s for k, s in d.items()} for v, d in heldout.items()},
        "heldout_per_concept": per_concept, "seconds": seconds,
        "settings": {"poolings": poolings, "methods": list(methods), "labels": settings.labels.to_dict()},
    }, indent=2) + "\n")
    (out / "comparison.md").write_text("# Sweep comparison\n\n" + comparison_table(result))
    return result

