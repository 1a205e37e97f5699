"""`actcache geometry`: how the captured layers relate, over every cached token, without the model.

- Linear CKA between every pair of captured layers of one hook (cka.py): exact while the (L d)^2 float64
  cross-product fits `max_memory`, the unbiased minibatch estimator otherwise (`cka_method` says which).
- Stages: consecutive captured layers whose CKA is below `stage_threshold` (default 0.9) mark a transition;
  `stages` = transitions + 1 (one stage when every neighbouring pair stays above it).
- For the MLP activations (`mlp_act`, the inputs of down_proj) when the cache has them, per layer: sparsity, the
  fraction of entries with |x| < `sparsity_eps` (default 1e-3, absolute), and temperature, the mean over neurons
  of each neuron's variance over tokens (population variance, float64 sums shifted by the first token).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from actcache.solvers.analyses.cka import ExactCKA, MinibatchCKA, exact_bytes
from actcache.solvers.analyses.shifted_moments import ShiftedMoments
from actcache.solvers.errors import SolverInputError

if TYPE_CHECKING:
    from actcache.storage.reader import CacheReader

__all__ = ["GeometrySettings", "geometry_cache", "layer_batches", "mlp_statistics", "stage_count"]

MLP_HOOK = "mlp_act"
STREAM_BLOCK = 8 << 20  # reader block per layer stream


@dataclass(frozen=True)
class GeometrySettings:
    hook: str = "resid_post"
    layers: str = "all"
    method: Literal["auto", "exact", "minibatch"] = "auto"
    max_memory: int = 2 << 30
    batch_tokens: int = 1024  # minibatch estimator: tokens per batch
    stage_threshold: float = 0.9
    sparsity_eps: float = 1e-3
    device: str = "cpu"
    overwrite: bool = False


def layer_batches(reader: CacheReader, hook: str, layers: Sequence[int], batch_tokens: int
                  ) -> Iterator[list[np.ndarray]]:
    """The same tokens' rows of every layer ([m, d] each), `batch_tokens` at a time, in storage order; the layer
    streams advance in lockstep, so memory is one block per layer plus one batch."""
    streams = [reader.iter_activations(hook, layer, block_bytes=STREAM_BLOCK, check_finite=True) for layer in layers]
    held: list[list[np.ndarray]] = [[] for _ in layers]
    count = 0
    for items in zip(*streams, strict=True):
        for k, (_doc, rows) in enumerate(items):
            held[k].append(rows)
        count += len(items[0][1])
        while count >= batch_tokens:
            joined = [np.concatenate(parts) for parts in held]
            yield [x[:batch_tokens] for x in joined]
            held = [[x[batch_tokens:]] for x in joined]
            count -= batch_tokens
    if count:
        yield [np.concatenate(parts) for parts in held]


def stage_count(cka: np.ndarray, layers: Sequence[int], threshold: float) -> tuple[int, list[list[int]]]:
    """(transitions + 1, the transitions as [layer, next layer]) along the captured layers in order."""
    transitions = [[layers[k], layers[k + 1]] for k in range(len(layers) - 1) if cka[k, k + 1] < threshold]
    return len(transitions) + 1, transitions


def mlp_statistics(reader: CacheReader, layer: int, eps: float) -> dict[str, float]:
    """Sparsity and temperature of one layer's MLP activations, streamed."""
    moments = ShiftedMoments()
    small = 0
    for _doc, rows in reader.iter_activations(MLP_HOOK, layer, check_finite=True):
        small += int((np.abs(rows) < eps).sum())  # rows: (n_tok, d_ff)
        moments.add(rows)
    if not moments.n:
        raise SolverInputError(f"the cache has no {MLP_HOOK} tokens at layer {layer}")
    variance = moments.variance()
    return {"sparsity": small / (moments.n * len(variance)), "temperature": float(variance.mean())}


def _cka(reader: CacheReader, settings: GeometrySettings, layers: Sequence[int]) -> tuple[np.ndarray, str, int]:
    width = reader.width(settings.hook)
    needed = exact_bytes(len(layers), width)
    method = settings.method
    if method == "auto":
        method = "exact" if needed <= settings.max_memory else "minibatch"
    elif method == "exact" and needed > settings.max_memory:
        raise SolverInputError(
            f"exact CKA of {len(layers)} layers x {width} features needs {needed / 2**20:.0f} MiB, over --max-memory "
            f"{settings.max_memory / 2**20:.0f} MiB: raise --max-memory, pick fewer --layers, or use --cka-method "
            f"minibatch"
        )
    if settings.batch_tokens < 4:
        raise SolverInputError(f"--batch-tokens {settings.batch_tokens}: the minibatch estimator needs at least 4")
    acc = (ExactCKA(len(layers), width, settings.device) if method == "exact"
           else MinibatchCKA(len(layers), settings.batch_tokens, settings.device))
    for batch in layer_batches(reader, settings.hook, layers, settings.batch_tokens):
        if method == "exact" or len(batch[0]) >= 4:
            acc.update(batch)
    if acc.n == 0:
        raise SolverInputError("the cache has too few tokens for CKA (the minibatch estimator needs batches of >= 4)")
    return acc.result(), method, acc.n


def geometry_cache(cache: str | Path, out: str | Path, settings: GeometrySettings) -> dict[str, Any]:
    """CKA matrix, stages and MLP statistics of a cache into `out/geometry.json`."""
    from actcache.solvers.analyses.hook_check import require_activation_hook
    from actcache.solvers.job_inputs import check_output, resolve_layers
    from actcache.storage import open_cache
    from actcache.storage.atomic_dir import atomic_dir
    from actcache.storage.selection import model_layer_count

    out_path = check_output(out, settings.overwrite)
    reader = open_cache(cache)
    require_activation_hook(reader, settings.hook)
    layers = sorted(resolve_layers(settings.layers, reader.layers, model_layer_count(reader.fingerprint)))
    matrix, method, n_tokens = _cka(reader, settings, layers)
    stages, transitions = stage_count(matrix, layers, settings.stage_threshold)
    result: dict[str, Any] = {
        "hook": settings.hook,
        "cka": {"layers": layers, "matrix": matrix.tolist()},
        "cka_method": method,
        "n_tokens": n_tokens,
        "stages": stages,
        "stage_threshold": settings.stage_threshold,
        "transitions": transitions,
    }
    if method == "minibatch":
        result["batch_tokens"] = settings.batch_tokens
    if MLP_HOOK in reader.hooks:
        result["sparsity_eps"] = settings.sparsity_eps
        result["mlp"] = {str(layer): mlp_statistics(reader, layer, settings.sparsity_eps) for layer in layers}
    with atomic_dir(out_path, overwrite=settings.overwrite) as tmp:
        (tmp / "geometry.json").write_text(json.dumps(result, indent=1) + "\n")
    return result
