"""Bad input to `actcache solve` / `sweep`: exit code 2 and one line that names the problem and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from actcache import actcache_cli
from job_fixtures import random_cache, story_metas


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-input")
    labelled = story_metas(3, 4, 3)
    return {
        "labelled": random_cache(root / "labelled", labelled, [3 + i % 5 for i in range(len(labelled))]),
        "unlabelled": random_cache(root / "unlabelled", [{"text_id": i} for i in range(6)], [4] * 6),
        "resid_only": random_cache(root / "resid_only", labelled, [4] * len(labelled), hooks=("resid_post",)),
    }


def _error(capsys, argv: list[str]) -> str:
    assert actcache_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("actcache: error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize(("cache", "extra", "expected"), [
    ("unlabelled", [], "no document is a positive of any concept"),
    ("labelled", ["--concepts", "c0,surprise"], "['surprise'] have no positive documents"),
    ("labelled", ["--label-field", "sentiment", "--positive", "positive"], "no document has the label field"),
    ("labelled", ["--layers", "1,2"], "layer(s) [2] not in the cache: it holds layers [1, 3]"),
    ("labelled", ["--pooling", "mean-skip:5"], "pooling mean-skip:5 needs 6"),
    ("labelled", ["--max-memory", "1MB"], "--max-memory 1.0 MiB is too small"),
    ("labelled", ["--methods", "caa,magic"], "unknown method 'magic'"),
])
def test_solve_refuses_with_one_line(caches, tmp_path, capsys, cache, extra, expected):
    err = _error(capsys, ["solve", "--cache", str(caches[cache]), "--out", str(tmp_path / "out"), *extra])
    assert expected in err
    assert not (tmp_path / "out").exists()


def test_existing_readout_directory_is_refused(caches, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    for command in ("solve", "sweep"):
        err = _error(capsys, [command, "--cache", str(caches["labelled"]), "--out", str(tmp_path / "out")])
        assert f"output directory {tmp_path / 'out'} exists: pass --overwrite to replace it" in err


@pytest.mark.parametrize("command", ["solve", "sweep"])
def test_overwrite_replaces_an_earlier_output_atomically(caches, tmp_path, capsys, command):
    out = tmp_path / "out"
    base = [command, "--cache", str(caches["labelled"]), "--out", str(out), "--methods", "caa"]
    assert actcache_cli.main([*base, "--layers", "1"]) == 0
    marker = "readout.json" if command == "solve" else "comparison.json"
    assert json.loads((out / marker).read_text())["layers"] == [1]
    (out / "stale.txt").write_text("from the first run")
    assert actcache_cli.main([*base, "--layers", "3", "--overwrite"]) == 0
    assert json.loads((out / marker).read_text())["layers"] == [3]
    assert not (out / "stale.txt").exists()  # replaced as a whole, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or old sibling left


def test_overwrite_never_replaces_a_folder_of_other_files(caches, tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("precious")
    err = _error(capsys, ["solve", "--cache", str(caches["labelled"]), "--out", str(tmp_path / "notes"),
                          "--overwrite"])
    assert "is not an earlier solve or sweep output" in err
    assert (tmp_path / "notes" / "thesis.tex").read_text() == "precious"


def test_default_methods_skip_heads_without_attn_z(caches, tmp_path, capsys):
    out = tmp_path / "out"
    assert actcache_cli.main(["solve", "--cache", str(caches["resid_only"]), "--out", str(out)]) == 0
    assert "note      heads skipped: the cache has no attn_z activations" in capsys.readouterr().out
    assert "top_heads" not in json.loads((out / "quality.json").read_text())["c0"]["layers"]["3"]
    err = _error(capsys, ["solve", "--cache", str(caches["resid_only"]), "--out", str(tmp_path / "heads"),
                          "--methods", "caa,heads"])
    assert "no attn_z activations: drop heads from --methods" in err


def test_sweep_refuses_a_pooling_too_long_for_a_document(caches, tmp_path, capsys):
    err = _error(capsys, ["sweep", "--cache", str(caches["labelled"]), "--out", str(tmp_path / "out"),
                          "--poolings", "last,span:0:7"])
    assert "pooling span:0:7 needs 7" in err


def test_the_cli_solves_and_prints_the_triage(caches, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["solve", "--cache", str(caches["labelled"]), "--out", str(out), "--methods", "all", "--pooling", "mean"]
    assert actcache_cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"readout   {out / 'readout.safetensors'} (caa)" in printed and "triage at layer 3:" in printed
    assert (out / "methods" / "pca_center.safetensors").is_file()
    # no weight files: the weight fields are null with the reason, everything else is there
    layer = json.loads((out / "quality.json").read_text())["c0"]["layers"]["3"]
    assert layer["best_neuron_idx"] is None and "no model source" in layer["neuron_reason"]
    assert layer["top_write_heads"] is None and "no model source" in layer["write_reason"]
    assert layer["top_heads"] and layer["ridge_r2"] is not None and layer["subspace_eigenvalues"]
