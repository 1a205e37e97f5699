"""Defaults that help: negative layers count from the end, --no-progress is quiet, `--corpus demo` works anywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from actcache.actcache_cli import main
from actcache.cache_builder.corpus import DEMO_CORPUS, load_corpus
from actcache.storage import open_cache
from actcache.storage.selection import LayerSelectionError, select_layers

SENTIMENT = Path(__file__).resolve().parent / "data" / "sentiment.jsonl"


@pytest.mark.parametrize(("spec", "wanted", "missing"), [
    ("-1", (29,), []),
    ("-30,-1", (0, 29), []),
    ("8,-1,29", (8, 29), []),  # -1 and 29 are the same layer
    ("-31,2", (2,), [-31]),  # past the first layer: reported as typed
    ([-2, 3], (3, 28), []),
    ("all", tuple(range(30)), []),
])
def test_negative_layers_count_from_the_models_end(spec: str | list[int], wanted: tuple[int, ...],
                                                   missing: list[int]) -> None:
    assert select_layers(spec, range(30), 30) == (wanted, missing)


def test_negative_layers_count_from_the_model_not_from_what_is_cached() -> None:
    """A cache of layers 8,15,22 of a 30-layer model: -1 is layer 29, which it lacks (not 22)."""
    assert select_layers("-1,8", (8, 15, 22), 30) == ((8,), [-1])


@pytest.mark.parametrize(("spec", "n_layers", "message"), [
    ("8,x", 30, "is not a list of integers"),
    (" , ", 30, "--layers is empty"),
    ("-1", None, "does not record the model's layer count"),
])
def test_unreadable_layer_selections_are_input_errors(spec: str, n_layers: int | None, message: str) -> None:
    with pytest.raises(LayerSelectionError, match=message):
        select_layers(spec, range(30), n_layers)


def test_build_and_solve_read_negative_layers_alike(tiny_sentiment_cache: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert open_cache(tiny_sentiment_cache).layers == (1, 3)
    out = tmp_path / "readout"
    assert main(["solve", "--cache", str(tiny_sentiment_cache), "--out", str(out), "--layers", "-1", "--label-field",
                 "sentiment", "--positive", "positive", "--methods", "caa"]) == 0
    assert json.loads((out / "readout.json").read_text())["layers"] == [3]
    capsys.readouterr()
    assert main(["solve", "--cache", str(tiny_sentiment_cache), "--out", str(tmp_path / "other"), "--layers", "-2",
                 "--label-field", "sentiment", "--positive", "positive", "--methods", "caa"]) == 2
    err = capsys.readouterr().err
    assert "layer(s) [-2] not in the cache" in err and "-1 is layer 3" in err and "[1, 3]" in err, err


def test_no_progress_silences_transformers_too(tiny_llama_dir: Path, tmp_path: Path,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    """A real build with --no-progress writes nothing to stderr: no bar of ours, none of transformers' own."""
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    assert main(["build", "--model", str(tiny_llama_dir), "--corpus", str(SENTIMENT), "--out",
                 str(tmp_path / "cache"), "--layers", "0", "--no-progress"]) == 0
    out, err = capfd.readouterr()
    assert err == "", err
    assert out.startswith("built 160 documents")
    assert hf_logging.is_progress_bar_enabled()  # restored for whoever uses transformers next in this process


def test_corpus_demo_names_the_bundled_corpus_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert [d.text for d in load_corpus("demo")] == [d.text for d in load_corpus(DEMO_CORPUS)]
    (tmp_path / "demo").mkdir()  # a folder of that name here is what the user means
    (tmp_path / "demo" / "mine.txt").write_text("My own document.")
    assert [d.text for d in load_corpus("demo")] == ["My own document."]
