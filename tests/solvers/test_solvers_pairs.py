"""Pairs are explicit and follow the corpus: the same corpus built with other batch and unit sizes, and committed
in another order, gives the same pairs and the same aggregator vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from actcache.actcache_cli import main
from actcache.cache_builder.build import BuildSettings, build_cache
from actcache.solvers import LabelSpec, read_readout
from actcache.solvers.job_inputs import build_labels
from actcache.solvers.sweep import SweepSettings, sweep_cache, variant_name
from actcache.storage import open_cache
from job_fixtures import story_jsonl

AGGREGATORS = ("mean", "pca", "logistic", "logistic_l1", "linear", "pca_diff", "pca_center")
_GOOD = ["the soup was rich and warm", "a lovely walk by the sea", "the team played a brilliant match",
         "fresh bread from the oven", "kind words from a stranger", "the garden bloomed early this year"]
_BAD = ["the soup was cold and bland", "a grim walk in the sleet", "the team lost a dreary match",
        "stale bread from the shelf", "harsh words from a stranger", "the garden died in the frost"]
FIELD = LabelSpec(label_field="sentiment", positive="positive", pair_field="pair")


def pair_rows() -> list[dict]:
    """Six pairs (a positive and its negative; pair p2 has a second negative), listed so that each pair's lines
    are far apart and the sentences differ in length (storage order, sorted by length, mixes the pairs), plus two
    unpaired documents."""
    rows = [{"text": f"{t}.", "sentiment": "positive", "pair": f"p{i}"} for i, t in enumerate(_GOOD)]
    rows += [{"text": f"Sadly, {t}, again and again.", "sentiment": "negative", "pair": f"p{i}"}
             for i, t in enumerate(_BAD)]
    rows += [{"text": "Sadly, nothing at all happened.", "sentiment": "negative", "pair": "p2"},
             {"text": "An unpaired happy day.", "sentiment": "positive"},
             {"text": "An unpaired gloomy, long and weary day of rain.", "sentiment": "negative"}]
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def caches(tmp_path_factory, tiny_llama_dir) -> dict[str, dict[str, Path]]:
    """Per corpus (field pairs, story layout): cache `a` built at once (batch 4, default units); cache `b` first
    from the corpus's second half, then from the whole corpus (batch 1, 16-token units): another commit order."""
    root = tmp_path_factory.mktemp("pairs")
    (root / "story").mkdir()
    story = story_jsonl(root / "story" / "corpus.jsonl")
    corpora = {"field": _write(root / "field" / "corpus.jsonl", pair_rows()), "story": story}
    out: dict[str, dict[str, Path]] = {}
    for name, corpus in corpora.items():
        lines = corpus.read_text().splitlines(keepends=True)
        half = root / name / "half" / corpus.name
        half.parent.mkdir()
        half.write_text("".join(lines[len(lines) // 2:]))
        a, b = root / name / "a", root / name / "b"
        common = {"model": str(tiny_llama_dir), "layers": "1,3", "progress": False}
        build_cache(BuildSettings(corpus=corpus, out=a, batch_size=4, **common))
        build_cache(BuildSettings(corpus=half, out=b, batch_size=1, unit_tokens=16, **common))
        build_cache(BuildSettings(corpus=corpus, out=b, batch_size=1, unit_tokens=16, **common))
        out[name] = {"a": a, "b": b}
    return out


def _named_pairs(cache: Path, spec: LabelSpec) -> list[tuple[int, tuple[int, ...]]]:
    """Pairs as corpus line numbers (positive, negatives)."""
    docs = open_cache(cache).documents()
    labels = build_labels(docs, spec)
    return [(docs[p.positive].meta["index"], tuple(docs[n].meta["index"] for n in p.negatives)) for p in labels.pairs]


def test_pairs_are_the_corpus_pairs_whatever_the_storage_order(caches) -> None:
    a, b = caches["field"]["a"], caches["field"]["b"]
    assert [d.key for d in open_cache(a).documents()] != [d.key for d in open_cache(b).documents()]
    rows = pair_rows()
    expected = []
    for line, row in enumerate(rows, start=1):
        if row["sentiment"] == "positive" and "pair" in row:
            negatives = tuple(k for k, r in enumerate(rows, start=1) if r.get("pair") == row["pair"] and k != line)
            expected.append((line, negatives))
    assert _named_pairs(a, FIELD) == _named_pairs(b, FIELD) == expected
    story = LabelSpec(split_field="split")
    sa, sb = caches["story"]["a"], caches["story"]["b"]
    assert [d.key for d in open_cache(sa).documents()] != [d.key for d in open_cache(sb).documents()]
    assert _named_pairs(sa, story) == _named_pairs(sb, story)
    assert len(_named_pairs(sa, story)) == 6  # three concepts x two scenarios, each with its scenario's baseline


@pytest.mark.parametrize(("corpus", "spec", "methods"), [
    ("field", FIELD, AGGREGATORS),
    # two pairs per concept: the L1 penalty zeroes logistic_l1's vectors there
    ("story", LabelSpec(split_field="split"), tuple(m for m in AGGREGATORS if m != "logistic_l1")),
])
def test_aggregator_vectors_do_not_depend_on_batches_units_or_commit_order(caches, tmp_path, corpus, spec,
                                                                          methods) -> None:
    settings = SweepSettings(poolings=("last",), methods=methods, layers="1,3", labels=spec)
    vectors = {}
    for build in ("a", "b"):
        out = tmp_path / build
        sweep_cache(caches[corpus][build], out, settings)
        vectors[build] = {m: read_readout(out / "variants" / variant_name(m, "last")) for m in methods}
    for method in methods:
        for layer in (1, 3):
            x = vectors["a"][method].vectors[layer].double().numpy()
            y = vectors["b"][method].vectors[layer].double().numpy()
            cosine = np.sum(x * y, axis=1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
            # logistic_l1's solver stops at its tolerance, so last-bit input differences move it a little further
            assert cosine.min() >= 1 - (1e-5 if method == "logistic_l1" else 1e-6), (method, layer)


def test_label_field_aggregators_without_pair_field_are_refused(caches, tmp_path, capsys) -> None:
    cache = str(caches["field"]["a"])
    labels = ["--label-field", "sentiment", "--positive", "positive"]
    code = main(["sweep", "--cache", cache, "--out", str(tmp_path / "s"), "--methods", "caa,pca", *labels])
    assert code == 2 and "--pair-field" in capsys.readouterr().err
    code = main(["solve", "--cache", cache, "--out", str(tmp_path / "v"), "--methods", "caa", "--aggregator", "mean",
                 *labels])
    assert code == 2 and "--pair-field" in capsys.readouterr().err
    assert not (tmp_path / "s").exists() and not (tmp_path / "v").exists()
    code = main(["sweep", "--cache", cache, "--out", str(tmp_path / "ok"), "--methods", "caa,pca", "--poolings",
                 "last", *labels, "--pair-field", "pair"])
    assert code == 0, capsys.readouterr().err


def test_label_errors_on_the_command_line_list_what_the_cache_has(caches, tmp_path, capsys) -> None:
    cache = str(caches["story"]["a"])
    code = main(["sweep", "--cache", cache, "--out", str(tmp_path / "s"), "--label-field", "concpt", "--positive",
                 "joy"])
    err = capsys.readouterr().err
    assert code == 2 and "no document has the label field 'concpt'; fields present: concept: " in err
    assert "split: train (" in err and "--label-field" in err
    code = main(["sweep", "--cache", cache, "--out", str(tmp_path / "s"), "--split-field", "split",
                 "--train-value", "fit", "--test-value", "test"])
    err = capsys.readouterr().err
    assert code == 2 and "values ['train'] besides 'fit'/'test'" in err and "--train-value and --test-value" in err
    code = main(["sweep", "--cache", cache, "--out", str(tmp_path / "ok"), "--split-field", "role", "--train-value",
                 "positive", "--test-value", "baseline", "--methods", "caa", "--poolings", "last", "--layers", "1"])
    assert code == 0, capsys.readouterr().err  # the split's values are whatever the flags name
