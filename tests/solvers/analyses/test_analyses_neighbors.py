"""`actcache neighbors` against a brute-force numpy computation (full cosine matrices, argmax)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from actcache.solvers.analyses.neighbors import NeighborSettings, nearest_neighbors, neighbors_cache
from actcache.solvers.errors import SolverInputError
from actcache.storage import open_cache
from actcache.storage.errors import InputError


def _brute(queries: np.ndarray, pool: np.ndarray, exclude: list[int] | None = None):
    q, p = queries.astype(np.float64), pool.astype(np.float64)
    mu = p.mean(axis=0)
    qc, pc = q - mu, p - mu
    cos_cen = (qc / np.linalg.norm(qc, axis=1)[:, None]) @ (pc / np.linalg.norm(pc, axis=1)[:, None]).T
    if exclude is not None:
        for i, j in enumerate(exclude):
            if j >= 0:
                cos_cen[i, j] = -np.inf
    best = cos_cen.argmax(axis=1)
    v = p[best]
    cos = (q * v).sum(1) / (np.linalg.norm(q, axis=1) * np.linalg.norm(v, axis=1))
    return best, (1 + cos) / 2, (1 + cos_cen[np.arange(len(q)), best]) / 2


@pytest.mark.parametrize("tile", [4096, 7])  # one block, and blocks that split both the queries and the pool
def test_nearest_neighbors_equal_brute_force(tile):
    rng = np.random.default_rng(3)
    pool = (5.0 + rng.standard_normal((300, 16))).astype(np.float32)  # a common offset: centring matters
    queries = (pool[rng.integers(0, 300, 50)] + 0.3 * rng.standard_normal((50, 16))).astype(np.float32)
    exclude = np.where(np.arange(50) % 5 == 0, rng.integers(0, 300, 50), -1)
    for ex in (None, exclude):
        found = nearest_neighbors(queries, pool, exclude=ex, tile=tile)
        best, fve, fve_cen = _brute(queries, pool, None if ex is None else list(ex))
        assert (found.index == best).all()
        np.testing.assert_allclose((1 + found.cos) / 2, fve, rtol=1e-12)
        np.testing.assert_allclose((1 + found.cos_cen) / 2, fve_cen, rtol=1e-12)


def test_neighbors_command_matches_brute_force(layered_cache, tmp_path):
    settings = NeighborSettings(layer=1, pool_where={"split": ["train"]}, query_where={"split": ["test"]})
    summary = neighbors_cache(layered_cache, tmp_path / "out", settings)
    reader = open_cache(layered_cache)
    pool, pool_keys, _ = reader.pooled("resid_post", 1, "last", {"split": "train"})
    queries, query_keys, _ = reader.pooled("resid_post", 1, "last", {"split": "test"})
    best, fve, fve_cen = _brute(queries, pool)
    written = json.loads((tmp_path / "out" / "neighbors.json").read_text())
    assert written == summary
    assert written["pool_size"] == len(pool) == 36 and written["n_queries"] == len(queries) == 12
    assert written["fve_nrm"] == pytest.approx(fve.mean(), rel=1e-6)
    assert written["fve_nrm_cen"] == pytest.approx(fve_cen.mean(), rel=1e-6)
    matches = [json.loads(line) for line in (tmp_path / "out" / "matches.jsonl").read_text().splitlines()]
    assert [m["key"] for m in matches] == query_keys
    assert [m["neighbor"] for m in matches] == [pool_keys[i] for i in best]
    # the planted concepts make neighbours far better than a random pair (centred: about 0.5)
    assert written["fve_nrm_cen"] > 0.9 and abs(written["random_floor_fve_nrm_cen"] - 0.5) < 0.2
    again = neighbors_cache(layered_cache, tmp_path / "again", settings)
    assert again["random_floor_fve_nrm_cen"] == written["random_floor_fve_nrm_cen"]  # seeded


def test_a_query_never_matches_itself(layered_cache, tmp_path):
    summary = neighbors_cache(layered_cache, tmp_path / "out", NeighborSettings(layer=2))  # pool = queries = all
    matches = [json.loads(line) for line in (tmp_path / "out" / "matches.jsonl").read_text().splitlines()]
    assert summary["pool_size"] == summary["n_queries"] == 48
    assert all(m["key"] != m["neighbor"] for m in matches)


def test_neighbors_refuses_an_empty_or_tiny_pool(layered_cache, tmp_path):
    with pytest.raises(InputError, match="no document has split="):
        neighbors_cache(layered_cache, tmp_path / "a", NeighborSettings(layer=1, pool_where={"split": ["dev"]}))
    with pytest.raises(SolverInputError, match="at least 2"):
        nearest_neighbors(np.ones((3, 4), np.float32), np.ones((1, 4), np.float32))
