"""`actcache geometry` against direct computations with full matrices: linear CKA from n x n Gram matrices, the
unbiased minibatch estimator batch by batch, MLP sparsity and temperature with numpy over every token."""

from __future__ import annotations

import json

import numpy as np
import pytest
from actcache.solvers.analyses.geometry import GeometrySettings, geometry_cache
from actcache.solvers.errors import SolverInputError
from actcache.storage import open_cache


def _tokens(cache, hook: str, layer: int) -> np.ndarray:
    """Every token of a layer, in the stream's order (storage order), float64."""
    return np.concatenate([rows for _, rows in open_cache(cache).iter_activations(hook, layer)]).astype(np.float64)


def _hsic_full(k: np.ndarray, m: np.ndarray) -> float:
    n = len(k)
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ m @ h))


def _hsic_unbiased(k: np.ndarray, m: np.ndarray) -> float:
    n = len(k)
    k, m = k - np.diag(np.diag(k)), m - np.diag(np.diag(m))
    one = np.ones(n)
    return float((np.trace(k @ m) + (one @ k @ one) * (one @ m @ one) / ((n - 1) * (n - 2))
                  - 2 / (n - 2) * one @ k @ m @ one) / (n * (n - 3)))


def _cka(hsic, xs: list[np.ndarray]) -> np.ndarray:
    grams = [x @ x.T for x in xs]
    h = np.array([[hsic(a, b) for b in grams] for a in grams])
    return h / np.sqrt(np.outer(np.diag(h), np.diag(h)))


def test_exact_cka_equals_the_gram_matrix_computation(layered_cache, tmp_path):
    result = geometry_cache(layered_cache, tmp_path / "out", GeometrySettings())
    assert json.loads((tmp_path / "out" / "geometry.json").read_text()) == result
    xs = [_tokens(layered_cache, "resid_post", layer) for layer in (0, 1, 2, 3)]
    assert result["cka_method"] == "exact" and result["n_tokens"] == len(xs[0])
    assert result["cka"]["layers"] == [0, 1, 2, 3]
    np.testing.assert_allclose(result["cka"]["matrix"], _cka(_hsic_full, xs), rtol=1e-9, atol=1e-12)
    # planted: layers 0-2 are maps of one signal (CKA >= 0.9 between neighbours), layer 3 is unrelated
    assert result["stages"] == 2 and result["transitions"] == [[2, 3]] and result["stage_threshold"] == 0.9


def test_minibatch_cka_equals_the_estimator_batch_by_batch(layered_cache, tmp_path):
    settings = GeometrySettings(max_memory=10_000, batch_tokens=64)  # the exact accumulator does not fit: auto
    result = geometry_cache(layered_cache, tmp_path / "out", settings)
    assert result["cka_method"] == "minibatch" and result["batch_tokens"] == 64
    xs = [_tokens(layered_cache, "resid_post", layer) for layer in (0, 1, 2, 3)]
    batches = [(a, min(a + 64, len(xs[0]))) for a in range(0, len(xs[0]), 64)]
    batches = [(a, b) for a, b in batches if b - a >= 4]
    grams = [[x[a:b] @ x[a:b].T for x in xs] for a, b in batches]
    h = np.mean([[[_hsic_unbiased(g[i], g[j]) for j in range(4)] for i in range(4)] for g in grams], axis=0)
    want = h / np.sqrt(np.outer(np.diag(h), np.diag(h)))
    np.testing.assert_allclose(result["cka"]["matrix"], want, rtol=1e-8, atol=1e-10)
    # and it estimates the exact CKA
    np.testing.assert_allclose(result["cka"]["matrix"], _cka(_hsic_full, xs), atol=0.05)


def test_mlp_sparsity_and_temperature(layered_cache, tmp_path):
    result = geometry_cache(layered_cache, tmp_path / "out", GeometrySettings(layers="1,2", stage_threshold=0.99))
    assert result["sparsity_eps"] == 1e-3 and set(result["mlp"]) == {"1", "2"}
    for layer in (1, 2):
        x = _tokens(layered_cache, "mlp_act", layer)
        assert result["mlp"][str(layer)]["sparsity"] == pytest.approx(float((np.abs(x) < 1e-3).mean()), rel=1e-12)
        assert 0.2 < result["mlp"][str(layer)]["sparsity"] < 0.8  # the ReLU zeroes a real share
        assert result["mlp"][str(layer)]["temperature"] == pytest.approx(float(x.var(axis=0).mean()), rel=1e-9)
    assert result["stages"] == 2 and result["transitions"] == [[1, 2]]  # CKA(1, 2) is about 0.97


def test_exact_cka_over_the_memory_bound_is_refused(layered_cache, tmp_path):
    with pytest.raises(SolverInputError, match="use --cka-method minibatch"):
        geometry_cache(layered_cache, tmp_path / "out", GeometrySettings(method="exact", max_memory=10_000))
