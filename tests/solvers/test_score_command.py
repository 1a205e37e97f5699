"""`actcache score` on a real solve: every line is the document's pooled activation dotted with the unit
concept vector read straight from the readout files (safetensors + JSON, not through our reader)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from actcache import open_cache
from actcache.actcache_cli import main
from actcache.solvers.job import SolveSettings, solve_cache
from actcache.solvers.job_inputs import LabelSpec
from job_fixtures import build, story_jsonl
from safetensors.numpy import load_file


@pytest.fixture(scope="module")
def solved(tmp_path_factory, tiny_llama_dir):
    root = tmp_path_factory.mktemp("score")
    corpus = story_jsonl(root / "stories.jsonl")
    cache = build(tiny_llama_dir, corpus, root / "cache", "1,3")
    solve_cache(cache, root / "out", SolveSettings(methods=("caa", "subspace"), layers="1,3",
                                                   labels=LabelSpec(split_field="split")))
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    return cache, root / "out", texts


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_scores_are_projections_on_the_readout_vectors(solved, tmp_path):
    cache_path, out, texts = solved
    assert main(["score", "--cache", str(cache_path), "--readout", str(out), "--out", str(tmp_path / "s.jsonl")]) == 0
    manifest = json.loads((out / "readout.json").read_text())
    tensors = load_file(str(out / "readout.safetensors"))
    cache = open_cache(cache_path)
    lines = _lines(tmp_path / "s.jsonl")
    assert len(lines) == cache.n_documents * len(manifest["concepts"]) * len(manifest["layers"])
    for row in lines:
        v = tensors[f"layer_{row['layer']}.vectors"][manifest["concepts"].index(row["concept"])].astype(np.float64)
        last = cache.activations("resid_post", row["layer"], row["key"])[-1].astype(np.float64)
        assert row["score"] == pytest.approx(last @ v / np.linalg.norm(v), rel=1e-6, abs=1e-6)
        assert row["text"] in texts
    assert {r["key"] for r in lines} == {d.key for d in cache.documents()}


def test_score_options_select_method_layers_pooling_and_documents(solved, tmp_path):
    cache_path, out, _ = solved
    argv = ["score", "--cache", str(cache_path), "--readout", str(out), "--method", "subspace", "--out",
            str(tmp_path / "s.jsonl"), "--layers", "3", "--pooling", "mean", "--where", "split=test"]
    assert main(argv) == 0
    cache = open_cache(cache_path)
    tensors = load_file(str(out / "methods" / "subspace.safetensors"))
    lines = _lines(tmp_path / "s.jsonl")
    test_keys = {d.key for d in cache.documents() if d.meta["split"] == "test"}
    assert {r["key"] for r in lines} == test_keys and {r["layer"] for r in lines} == {3}
    concepts = json.loads((out / "methods" / "subspace.json").read_text())["concepts"]
    for row in lines:
        v = tensors["layer_3.vectors"][concepts.index(row["concept"])].astype(np.float64)
        mean = cache.activations("resid_post", 3, row["key"]).astype(np.float64).mean(axis=0)
        assert row["score"] == pytest.approx(mean @ v / np.linalg.norm(v), rel=1e-6, abs=1e-6)


def test_score_refuses_bad_input_in_one_line(solved, tmp_path, capsys):
    cache_path, out, _ = solved
    base = ["score", "--cache", str(cache_path), "--out", str(tmp_path / "s.jsonl")]
    assert main([*base, "--readout", str(tmp_path)]) == 2
    assert "readout.json not found" in capsys.readouterr().err
    assert main([*base, "--readout", str(out), "--layers", "2"]) == 2
    assert "layer(s) [2] not in the readout" in capsys.readouterr().err
    assert main([*base, "--readout", str(out), "--where", "splt=test"]) == 2
    assert "no document has the label field 'splt'" in capsys.readouterr().err
    assert not (tmp_path / "s.jsonl").exists()
