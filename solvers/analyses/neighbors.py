"""`actcache neighbors`: the nearest-neighbour retrieval baseline of an activation verbaliser, from the cache.

For each query vector h (pooled, e.g. the last token of a held-out document), the pool vector v with the largest
centred cosine cos(h - mu, v - mu), mu the pool mean; scored with fve_nrm = (1 + cos(h, v)) / 2 and
fve_nrm_cen = (1 + cos(h - mu, v - mu)) / 2, averaged over queries, next to a random-pair floor (each query
against a seeded uniform draw from the pool). A query whose document is also in the pool never matches itself.
Exact: blocked matrix products of unit rows (torch, on `--device`), a running argmax per query block, so memory is
the two pooled matrices plus one [query block, pool block] score tile.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from actcache.solvers.errors import SolverInputError

__all__ = ["NeighborSettings", "Neighbors", "nearest_neighbors", "neighbors_cache"]

TILE = 4096  # rows of a query or pool block


@dataclass(frozen=True)
class Neighbors:
    """Per query: the pool index of its neighbour and the two cosines."""

    index: np.ndarray  # (n_q,) int64
    cos: np.ndarray  # (n_q,) float64, cos(h, v)
    cos_cen: np.ndarray  # (n_q,) float64, cos(h - mu, v - mu)
    mean: np.ndarray  # (d,) float64, mu


def _unit_rows(x: Any) -> Any:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-30)


def nearest_neighbors(queries: np.ndarray, pool: np.ndarray, *, exclude: np.ndarray | None = None,
                      device: str = "cpu", tile: int = TILE) -> Neighbors:
    """Exact nearest pool row of each query by centred cosine; `exclude[q]` is a pool index query q may not
    match (its own document), -1 for none."""
    import torch

    if len(pool) < 2:
        raise SolverInputError(f"the pool has {len(pool)} vector(s): centred cosines need at least 2")
    mean = pool.astype(np.float64).mean(axis=0)  # (d,)
    mu = torch.from_numpy(mean).float().to(device)
    pool_t = torch.from_numpy(pool).to(device)  # (n_p, d)
    pool_cen = _unit_rows(pool_t - mu)
    best = np.empty(len(queries), dtype=np.int64)
    for a in range(0, len(queries), tile):
        q_cen = _unit_rows(torch.from_numpy(queries[a:a + tile]).to(device) - mu)  # (b, d)
        top = torch.full((len(q_cen),), -torch.inf, device=device)
        arg = torch.zeros(len(q_cen), dtype=torch.int64, device=device)
        for b in range(0, len(pool_t), tile):
            scores = q_cen @ pool_cen[b:b + tile].T  # (b_q, b_p)
            if exclude is not None:
                own = torch.from_numpy(exclude[a:a + tile]).to(device) - b
                hit = (own >= 0) & (own < scores.shape[1])
                scores[hit.nonzero()[:, 0], own[hit]] = -torch.inf
            value, where = scores.max(dim=1)
            better = value > top
            top, arg = torch.where(better, value, top), torch.where(better, where + b, arg)
        best[a:a + tile] = arg.cpu().numpy()
    return Neighbors(best, _cosines(queries, pool[best]), _cosines(queries - mean, pool[best] - mean), mean)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.einsum("ij,ij->i", a, b) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300)


def fve(cos: np.ndarray) -> np.ndarray:
    """(1 + cos) / 2: 1 for the same direction, 0.5 orthogonal, 0 opposite."""
    return (1.0 + cos) / 2.0


@dataclass(frozen=True)
class NeighborSettings:
    layer: int
    pool_where: dict[str, list[str]] | None = None
    query_where: dict[str, list[str]] | None = None
    pooling: str = "last"
    hook: str = "resid_post"
    seed: int = 0
    device: str = "cpu"
    overwrite: bool = False


def neighbors_cache(cache: str | Path, out: str | Path, settings: NeighborSettings) -> dict[str, Any]:
    """Pool and query documents chosen by labels, their neighbours, `neighbors.json` and `matches.jsonl`."""
    from actcache.solvers.analyses.hook_check import require_activation_hook
    from actcache.solvers.job_inputs import check_output, resolve_layers
    from actcache.storage import open_cache
    from actcache.storage.atomic_dir import atomic_dir
    from actcache.storage.selection import model_layer_count

    out_path = check_output(out, settings.overwrite)
    reader = open_cache(cache)
    require_activation_hook(reader, settings.hook)
    (layer,) = resolve_layers([settings.layer], reader.layers, model_layer_count(reader.fingerprint))
    pool, pool_keys, _ = reader.pooled(settings.hook, layer, settings.pooling, settings.pool_where)
    queries, query_keys, _ = reader.pooled(settings.hook, layer, settings.pooling, settings.query_where)
    if not len(queries):
        raise SolverInputError("no query document: --query-where matches nothing")
    row = {k: i for i, k in enumerate(pool_keys)}
    exclude = np.array([row.get(k, -1) for k in query_keys], dtype=np.int64)
    found = nearest_neighbors(queries, pool, exclude=exclude if (exclude >= 0).any() else None,
                              device=settings.device)
    rng = np.random.default_rng(settings.seed)
    draw = rng.integers(0, len(pool) - (exclude >= 0))  # a uniform pool row other than the query's own
    draw += (exclude >= 0) & (draw >= exclude)
    floor_cen = _cosines(queries - found.mean, pool[draw] - found.mean)
    summary = {
        "fve_nrm": float(fve(found.cos).mean()),
        "fve_nrm_cen": float(fve(found.cos_cen).mean()),
        "random_floor_fve_nrm": float(fve(_cosines(queries, pool[draw])).mean()),
        "random_floor_fve_nrm_cen": float(fve(floor_cen).mean()),
        "pool_size": len(pool),
        "n_queries": len(queries),
        "layer": layer, "hook": settings.hook, "pooling": settings.pooling, "seed": settings.seed,
    }
    with atomic_dir(out_path, overwrite=settings.overwrite) as tmp:
        (tmp / "neighbors.json").write_text(json.dumps(summary, indent=1) + "\n")
        with open(tmp / "matches.jsonl", "w") as sink:
            for q, key in enumerate(query_keys):
                sink.write(json.dumps({"key": key, "neighbor": pool_keys[found.index[q]],
                                       "fve_nrm": float(fve(found.cos[q])),
                                       "fve_nrm_cen": float(fve(found.cos_cen[q]))}) + "\n")
    return summary
