"""The whole solve job on tiny models against an independent reference (plain forward + direct maths),
the sweep (one read per stream, same vectors as solve) and the Ray fan-out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from actcache.solvers import read_readout
from actcache.solvers.job import SolveSettings, solve_cache
from actcache.solvers.job_inputs import LabelSpec
from actcache.solvers.sweep import SweepSettings, sweep_cache
from actcache.storage import open_cache
from job_fixtures import (
    CONCEPTS,
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
            assert cosine(caa_file.vectors[layer][k].double().numpy(), caa[c]) >= 0.999
            sub, evals = reference_subspace(ref.resid[layer], pos, neg, diff)
            assert cosine(subspace_file.vectors[layer][k].double().numpy(), sub) >= 0.999
            got = quality[c]["layers"][str(layer)]
            np.testing.assert_allclose(got["subspace_eigenvalues"], evals, rtol=1e-4, atol=1e-6)
            top, _, concentration = reference_heads(z, pos, neg, n_heads)
            assert [h[0] for h in got["top_heads"]] == top
            assert got["head_concentration"] == pytest.approx(concentration, abs=1e-4)
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


def test_sweep_reads_each_stream_once_and_matches_solve(tiny_caches, tmp_path, monkeypatch):
    cache_path, _ = tiny_caches["llama"]
    labels = LabelSpec(split_field="split")
    solve_cache(cache_path, tmp_path / "solve", SolveSettings(methods=("caa", "subspace"), pooling="mean",
                                                               layers="1,3", labels=labels))
    from actcache.storage.reader import CacheReader

    reads: list[tuple[str, int]] = []
    original = CacheReader.iter_activations

    def counting(self, hook, layer, keys=None, **kwargs):
        reads.append((hook, layer))
        return original(self, hook, layer, keys, **kwargs)

    monkeypatch.setattr(CacheReader, "iter_activations", counting)
    result = sweep_cache(cache_path, tmp_path / "sweep", SweepSettings(
        poolings=("last", "mean", "mean-skip:1"), methods=("caa", "pca", "logistic", "subspace"), layers="all",
        labels=labels))
    assert sorted(reads) == [("resid_post", 1), ("resid_post", 3)]  # 12 variants, one read per stream
    assert len(result.variants) == 12
    for method in ("caa", "subspace"):
        swept = read_readout(tmp_path / "sweep" / "variants" / f"{method}__mean")
        solved = read_readout(tmp_path / "solve", None if method == "caa" else method)
        for layer in LAYERS:
            assert np.allclose(swept.vectors[layer].numpy(), solved.vectors[layer].numpy(), atol=1e-3)
    assert result.cosine["caa__last"]["caa__last"] == pytest.approx(1.0, abs=1e-3)
    table = (tmp_path / "sweep" / "comparison.md").read_text()
    assert "AUROC" in table and "subspace__mean-skip-1" in table
    assert all(result.heldout[v][3]["auroc"] is not None for v in result.variants)


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
