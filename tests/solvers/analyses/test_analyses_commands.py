"""The three analyses through the command line: registered, run on a cache, write their outputs, print a line;
bad input is one line and exit 2."""

from __future__ import annotations

import json

from actcache.actcache_cli import main


def test_probe_neighbors_geometry_commands(layered_cache, tmp_path, capsys):
    common = ["--cache", str(layered_cache), "--device", "cpu"]
    assert main(["probe", *common, "--out", str(tmp_path / "p"), "--label-field", "concept", "--positive", "c0",
                 "--layers", "0"]) == 0
    assert "layer 0: auroc" in capsys.readouterr().out
    assert set(json.loads((tmp_path / "p" / "metrics.json").read_text())) == {"0"}
    assert main(["neighbors", *common, "--out", str(tmp_path / "n"), "--layer", "1", "--pool-where", "split=train",
                 "--query-where", "split=test"]) == 0
    assert json.loads(capsys.readouterr().out)["n_queries"] == 12
    assert (tmp_path / "n" / "matches.jsonl").is_file()
    assert main(["geometry", *common, "--out", str(tmp_path / "g"), "--cka-method", "minibatch"]) == 0
    assert "cka (minibatch)" in capsys.readouterr().out
    assert main(["geometry", *common, "--out", str(tmp_path / "g"), "--overwrite"]) == 0
    assert json.loads((tmp_path / "g" / "geometry.json").read_text())["cka_method"] == "exact"


def test_bad_input_is_one_line(layered_cache, tmp_path, capsys):
    code = main(["probe", "--cache", str(layered_cache), "--out", str(tmp_path / "p"), "--label-field", "concept"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--positive" in err


def test_expert_ids_are_not_activations(layered_cache, tmp_path, capsys):
    runs = [["probe", "--label-field", "concept", "--positive", "c0"], ["neighbors", "--layer", "0"], ["geometry"]]
    for k, args in enumerate(runs):
        out = str(tmp_path / f"o{k}")
        code = main([*args, "--cache", str(layered_cache), "--hook", "router_experts", "--out", out])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "expert ids" in err and "resid_post" in err, err
        assert not (tmp_path / f"o{k}").exists()


def test_non_finite_taps_are_refused(tmp_path, capsys):
    from layered_cache import write_layered_cache

    cache = str(write_layered_cache(tmp_path / "cache", nan_row=30))
    runs = [["probe", "--label-field", "concept", "--positive", "c0", "--layers", "0"],
            ["probe", "--label-field", "concept", "--positive", "c0", "--layers", "0", "--pooling", "token"],
            ["neighbors", "--layer", "0", "--pooling", "mean"], ["geometry"]]
    for k, args in enumerate(runs):
        assert main([*args, "--cache", cache, "--out", str(tmp_path / f"o{k}"), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert "NaN" in err or "non-finite" in err, err
        assert not (tmp_path / f"o{k}").exists()
