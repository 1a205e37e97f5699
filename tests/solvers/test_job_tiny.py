"""The whole solve job on tiny models against an independent reference (plain forward + direct maths),
the sweep (one read per stream, same vectors as solve) and the Ray fan-out."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from actcache.solvers import read_readout
from actcache.solvers.job import SolveSettings, solve_cache
from actcache.solvers.job_inputs import LabelSpec
from actcache.solvers.sweep import SweepSettings, sweep_cache, variant_name
from actcache.storage import open_cache
from job_fixtures import (
    CONCEPTS,
    SAME,
    build,
    cosine,
    pool,
    reference_caa,
    reference_forward,
    reference_heads,
    reference_quality,
    reference_ridge,
    reference_subspace,
    story_jsonl,
)

LAYERS = [1, 3]
METHODS = ("caa", "subspace", "heads", "ridge", "quality")


@pytest.fixture(scope="module")
def tiny_caches(tmp_path_factory, tiny_llama_dir, tiny_moe_dir) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("tiny-job")
    corpus = story_jsonl(root / "stories.jsonl")
    return {name: (build(model, corpus, root / name, "1,3"), model)
            for name, model in (("llama", tiny_llama_dir), ("moe", tiny_moe_dir))}


def _split_sets(docs) -> tuple[list[int], dict[str, tuple[list[int], list[int]]]]:
    fit = [i for i, d in enumerate(docs) if d.meta["split"] == "train"]
    sets = {}
    for c in CONCEPTS:
        pos = [i for i in fit if docs[i].meta.get("concept") == c]
        sets[c] = (pos, [i for i in fit if i not in pos])
    return fit, sets


@pytest.mark.parametrize("name", ["llama", "moe"])
def test_solve_matches_independent_reference(name, tiny_caches, tmp_path):
    cache_path, model_dir = tiny_caches[name]
    settings = SolveSettings(methods=METHODS, layers="1,3", labels=LabelSpec(split_field="split"))
    result = solve_cache(cache_path, tmp_path / "out", settings)
    reader = open_cache(cache_path)
    docs = reader.documents()
    ref = reference_forward(model_dir, [reader.token_ids(d.key) for d in docs], LAYERS)
    n_heads, _ = reader.head_shape("attn_z")
    _, sets = _split_sets(docs)
    quality = json.loads((tmp_path / "out" / "quality.json").read_text())
    caa_file, subspace_file = read_readout(tmp_path / "out"), read_readout(tmp_path / "out", "subspace")
    assert caa_file.concepts == CONCEPTS and caa_file.layers == tuple(LAYERS)
    for layer in LAYERS:
        x = np.stack([pool(h, "last") for h in ref.resid[layer]])  # (n_docs, d)
        z = np.stack([pool(h, "last") for h in ref.attn[layer]])
        caa = {}
        for k, c in enumerate(CONCEPTS):
            pos, neg = sets[c]
            caa[c], diff = reference_caa(x, pos, neg)
            assert cosine(caa_file.vectors[layer][k].double().numpy(), caa[c]) >= SAME
            sub, evals = reference_subspace(ref.resid[layer], pos, neg, diff)
            assert cosine(subspace_file.vectors[layer][k].double().numpy(), sub) >= SAME
            got = quality[c]["layers"][str(layer)]
            np.testing.assert_allclose(got["subspace_eigenvalues"], evals, rtol=1e-4, atol=1e-6)
            top, _, concentration = reference_heads(z, pos, neg, n_heads)
            assert [h[0] for h in got["top_heads"]] == top
            assert concentration is None and got["head_concentration"] is None  # 4 heads: the top 10 is all
            expected = reference_quality(x[pos], caa[c], ref.w_down[layer])
            for field, value in expected.items():
                assert got[field] == pytest.approx(value, rel=1e-4, abs=1e-4), (c, layer, field)
            if ref.w_down[layer] is None:
                assert got["best_neuron_idx"] is None and "MoE" in got["neuron_reason"]
            assert got["top_write_heads"] is not None  # W_O read from the safetensors files
        r2 = reference_ridge(np.stack([caa[c] for c in CONCEPTS]))
        for k, c in enumerate(CONCEPTS):
            assert quality[c]["layers"][str(layer)]["ridge_r2"] == pytest.approx(r2[k], abs=1e-4)
    assert set(result.evaluation["caa"]) == set(LAYERS)  # the test split was scored
    assert "triage at layer 3" in result.summary()


def test_sweep_reads_each_stream_once_and_matches_the_reference(tiny_caches, tmp_path, monkeypatch):
    cache_path, model_dir = tiny_caches["llama"]
    from actcache.storage.reader import CacheReader

    reads: list[tuple[str, int]] = []
    original = CacheReader.iter_activations

    def counting(self, hook, layer, keys=None, **kwargs):
        reads.append((hook, layer))
        return original(self, hook, layer, keys, **kwargs)

    monkeypatch.setattr(CacheReader, "iter_activations", counting)
    poolings = ("last", "mean", "mean-skip:1")
    result = sweep_cache(cache_path, tmp_path / "sweep", SweepSettings(
        poolings=poolings, methods=("caa", "pca", "logistic", "subspace", "mean"), layers="all",
        labels=LabelSpec(split_field="split")))
    monkeypatch.undo()
    assert sorted(reads) == [("resid_post", 1), ("resid_post", 3)]  # 15 variants, one read per stream
    assert len(set(result.variants)) == 15
    assert "mean__pool-mean" in result.variants  # aggregator mean on pooling mean: no `mean__mean`
    reader = open_cache(cache_path)
    docs = reader.documents()
    ref = reference_forward(model_dir, [reader.token_ids(d.key) for d in docs], LAYERS)
    _, sets = _split_sets(docs)
    for pooling in poolings:
        caa_file = read_readout(tmp_path / "sweep" / "variants" / variant_name("caa", pooling))
        subspace_file = read_readout(tmp_path / "sweep" / "variants" / variant_name("subspace", pooling))
        for layer in LAYERS:
            x = np.stack([pool(h, pooling) for h in ref.resid[layer]])
            for k, c in enumerate(CONCEPTS):
                caa, diff = reference_caa(x, *sets[c])
                assert cosine(caa_file.vectors[layer][k].double().numpy(), caa) >= SAME, (pooling, layer, c)
                sub, _ = reference_subspace(ref.resid[layer], *sets[c], diff)
                assert cosine(subspace_file.vectors[layer][k].double().numpy(), sub) >= SAME, (pooling, layer, c)
    # the cosine table is what the written vectors say (mean over concepts and layers)
    a = read_readout(tmp_path / "sweep" / "variants" / "caa__pool-last")
    b = read_readout(tmp_path / "sweep" / "variants" / "pca__pool-mean-skip-1")
    expected = np.mean([(a.vectors[layer] * b.vectors[layer]).sum(1).numpy() for layer in LAYERS])
    assert result.cosine["caa__pool-last"]["pca__pool-mean-skip-1"] == pytest.approx(expected, abs=2e-3)
    # 15 rows: the table lists nearest variants; the full matrix is in cosine.csv
    table = (tmp_path / "sweep" / "comparison.md").read_text()
    assert "nearest variants" in table and "subspace__pool-mean-skip-1" in table and "AUROC" in table
    assert table.count("| caa__pool-last |") == 2  # one held-out row, one nearest-variants row; no 15-column matrix
    with (tmp_path / "sweep" / "cosine.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["variant", *result.variants] and len(rows) == 16
    assert float(rows[1 + result.variants.index("caa__pool-last")][1 + result.variants.index(
        "pca__pool-mean-skip-1")]) == pytest.approx(expected, abs=2e-3)
    assert all(result.heldout[v][3]["auroc"] is not None for v in result.variants)


def test_solve_is_a_sweep_with_one_variant(tiny_caches, tmp_path):
    """One setup path and one memory formula: the same (pooling, methods) under the same budget plan alike."""
    cache_path, _ = tiny_caches["llama"]
    common = {"layers": "1,3", "labels": LabelSpec(split_field="split"), "max_memory": 200 * 2**20}
    solved = solve_cache(cache_path, tmp_path / "solve", SolveSettings(
        methods=("caa", "subspace"), aggregators=("pca",), pooling="mean-skip:1", **common))
    swept = sweep_cache(cache_path, tmp_path / "sweep", SweepSettings(
        poolings=("mean-skip:1",), methods=("caa", "subspace", "pca"), **common))
    assert {k: v for k, v in solved.memory.items() if k != "subspace_passes"} == swept.memory
    for method in ("caa", "subspace", "pca"):
        a = read_readout(tmp_path / "solve", method).vectors
        b = read_readout(tmp_path / "sweep" / "variants" / variant_name(method, "mean-skip:1")).vectors
        assert all(np.array_equal(a[layer].numpy(), b[layer].numpy()) for layer in LAYERS)


def test_small_sweep_prints_the_full_cosine_matrix(tiny_caches, tmp_path):
    cache_path, _ = tiny_caches["llama"]
    result = sweep_cache(cache_path, tmp_path / "sweep", SweepSettings(methods=("caa", "pca"), layers="3"))
    assert result.variants == ("caa__pool-last", "pca__pool-last", "caa__pool-mean-skip-1", "pca__pool-mean-skip-1")
    assert "| | caa__pool-last | pca__pool-last |" in result.summary()


def test_ray_workers_give_the_same_vectors(tiny_caches, tmp_path):
    cache_path, _ = tiny_caches["llama"]
    base = SolveSettings(methods=("caa", "subspace"), aggregators=("pca",), layers="1,3",
                         labels=LabelSpec(split_field="split"))
    solve_cache(cache_path, tmp_path / "one", base)
    from dataclasses import replace

    solve_cache(cache_path, tmp_path / "ray", replace(base, workers=2))
    for method in (None, "subspace", "pca"):
        one, ray = read_readout(tmp_path / "one", method), read_readout(tmp_path / "ray", method)
        for layer in LAYERS:
            assert np.allclose(one.vectors[layer].numpy(), ray.vectors[layer].numpy(), atol=1e-3)
