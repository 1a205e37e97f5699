"""Relabelling a built cache: `actcache label`, a build whose corpus changed its labels, and repeated texts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from actcache.actcache_cli import main
from actcache.cache_builder.build import BuildSettings, build_cache
from actcache.storage import open_cache
from build_fixtures import TEXTS


def _corpus(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(topics: list[str]) -> list[dict]:
    return [{"text": t, "topic": topic} for t, topic in zip(TEXTS, topics, strict=True)]


def _metas(cache: Path, annotations: int | None = None) -> dict[int, dict]:
    """Line number -> labels of every cached document, as the reader gives them."""
    return {d.meta["index"]: d.meta for d in open_cache(cache, annotations=annotations).documents()}


def test_label_command_and_relabelling_build_replace_labels_without_recomputing(
        tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    first = ["a", "b", "a", "b", "a", "b", "a"]
    settings = BuildSettings(model=str(tiny_llama_dir), corpus=_corpus(tmp_path / "c.jsonl", _rows(first)),
                             out=cache, layers="1", progress=False)
    build_cache(settings)
    chunks = sorted(p.relative_to(cache) for p in (cache / "segments").rglob("*") if p.is_file())

    second = ["x", "b", "a", "b", "x", "b", "a"]  # documents 1 and 5 (lines 1 and 5) change
    assert main(["label", str(cache), "--from", str(_corpus(tmp_path / "c.jsonl", _rows(second)))]) == 0
    assert "relabelled 2 documents (labels version 1)" in capsys.readouterr().out
    assert {i: m["topic"] for i, m in _metas(cache).items()} == dict(enumerate(second, start=1))
    assert {i: m["topic"] for i, m in _metas(cache, annotations=0).items()} == dict(enumerate(first, start=1))

    third = ["x", "y", "a", "b", "x", "b", "a"]
    report = build_cache(BuildSettings(**{**settings.__dict__, "corpus": _corpus(tmp_path / "c.jsonl",
                                                                                _rows(third))}))
    assert report.built_documents == 0 and report.relabelled == 1
    assert "relabelled 1 documents" in report.summary(cache)
    assert {i: m["topic"] for i, m in _metas(cache).items()} == dict(enumerate(third, start=1))
    assert {i: m["topic"] for i, m in _metas(cache, annotations=1).items()} == dict(enumerate(second, start=1))
    # nothing was recomputed or rewritten: the same chunk files, and the same units
    assert sorted(p.relative_to(cache) for p in (cache / "segments").rglob("*") if p.is_file()) == chunks

    assert main(["label", str(cache), "--from", str(_corpus(tmp_path / "other.jsonl", [{"text": "never built"}]))]) == 2
    assert "none of the 1 documents" in capsys.readouterr().err


def test_a_text_under_two_labels_keeps_both(tiny_llama_dir: Path, tmp_path: Path) -> None:
    rows = [{"text": TEXTS[0], "topic": "cooking", "split": "train"}, {"text": TEXTS[1], "topic": "sports"},
            {"text": TEXTS[0], "topic": "sports", "split": "train"}]
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match="keep every value, as a list in corpus order"):
        build_cache(BuildSettings(model=str(tiny_llama_dir), corpus=_corpus(tmp_path / "c.jsonl", rows), out=cache,
                                  layers="1", progress=False))
    metas = sorted((d.meta for d in open_cache(cache).documents()), key=lambda m: isinstance(m["index"], int))
    assert metas == [{"topic": ["cooking", "sports"], "split": "train", "source": "c.jsonl", "index": [1, 3]},
                     {"topic": "sports", "source": "c.jsonl", "index": 2}]
