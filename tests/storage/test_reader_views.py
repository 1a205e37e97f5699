"""The reader's next-step views on a real build (tiny Llama): pooled matrices, stored texts, one xarray Dataset.

Each is checked against `activations()` and the corpus itself, computed here without the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from actcache import open_cache
from actcache.actcache_cli import main
from actcache.cache_builder.build import BuildSettings, build_cache
from actcache.storage.pooled import PoolingError
from actcache.storage.texts import TextsMissingError

TEXTS = [
    "Plain ASCII sentence about cooking pasta.",
    "Crème brûlée, naïve café — déjà vu.",
    "日本語の文章：料理とスポーツ。",
    "Emoji 🍝⚽ and a newline\nin the middle, tabs\tand \"quotes\".",
    "Greek αβγ, Cyrillic жизнь, Hebrew שלום, Arabic مرحبا.",
    "Short.",
    "Another sports sentence: the striker scored twice in the second half.",
    "The soup simmered for an hour with thyme and bay leaves.",
]


def _corpus(path: Path) -> Path:
    rows = [{"text": t, "topic": "food" if i % 2 == 0 else "sport", "split": "test" if i % 4 == 3 else "train",
             "n": i} for i, t in enumerate(TEXTS)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def views_cache(tmp_path_factory, tiny_llama_dir) -> Path:
    root = tmp_path_factory.mktemp("views")
    out = root / "cache"  # small units, so that the documents span several committed segments
    build_cache(BuildSettings(model=str(tiny_llama_dir), corpus=_corpus(root / "c.jsonl"), out=out, layers="1,3",
                              unit_tokens=24, batch_size=2, progress=False))
    return out


@pytest.mark.parametrize(("pooling", "direct"), [
    ("last", lambda a: a[-1]),
    ("mean", lambda a: a.mean(axis=0)),
    ("mean-skip:1", lambda a: a[1:].mean(axis=0)),
    ("span:0:2", lambda a: a[0:2].mean(axis=0)),
])
def test_pooled_equals_a_direct_computation_from_activations(views_cache, pooling, direct):
    cache = open_cache(views_cache)
    x, keys, metas = cache.pooled("resid_post", 3, pooling)
    assert len(cache.commit_records()) > 1
    assert keys == [d.key for d in cache.documents()] and metas == [d.meta for d in cache.documents()]
    expected = np.stack([direct(cache.activations("resid_post", 3, k).astype(np.float64)) for k in keys])
    assert x.shape == (len(TEXTS), cache.width("resid_post")) and x.dtype == np.float32
    np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-6)


def test_pooled_filters_by_labels_and_says_what_exists(views_cache):
    cache = open_cache(views_cache)
    x, keys, metas = cache.pooled("attn_z", 1, "last", where={"split": "test", "topic": "sport"})
    assert sorted(m["n"] for m in metas) == [3, 7]
    np.testing.assert_array_equal(x, np.stack([cache.activations("attn_z", 1, k)[-1] for k in keys]))
    _, _, metas = cache.pooled("resid_post", 1, where={"n": "5"})  # command-line strings match numbers
    assert [m["n"] for m in metas] == [5]
    with pytest.raises(PoolingError, match="no document has the label field 'topc': the fields are .*topic"):
        cache.pooled("resid_post", 1, where={"topc": "food"})
    with pytest.raises(PoolingError, match="no document has topic='cooking': its values are food, sport"):
        cache.pooled("resid_post", 1, where={"topic": "cooking"})
    with pytest.raises(PoolingError, match="needs 101"):
        cache.pooled("resid_post", 1, "mean-skip:100")


def test_texts_round_trip_exactly(views_cache):
    cache = open_cache(views_cache)
    docs = cache.documents()
    assert len(list(views_cache.rglob("text_bytes"))) == len(cache.commit_records())  # stored, per segment
    for doc in docs:
        assert cache.text(doc.key) == TEXTS[doc.meta["n"]]
    keys = [d.key for d in reversed(docs)]
    assert cache.texts(keys) == [TEXTS[d.meta["n"]] for d in reversed(docs)]


def test_no_text_build_keeps_no_text(tmp_path, tiny_llama_dir):
    out = tmp_path / "private"
    argv = ["build", "--model", str(tiny_llama_dir), "--corpus", str(_corpus(tmp_path / "c.jsonl")), "--out",
            str(out), "--layers", "1", "--no-text", "--no-progress"]
    assert main(argv) == 0
    cache = open_cache(out)
    key = cache.documents()[0].key
    with pytest.raises(TextsMissingError, match="built with --no-text"):
        cache.text(key)
    assert cache.texts([key], strict=False) == [None]
    assert not list(out.rglob("text_*"))  # no text array in any segment
    assert cache.pooled("resid_post", 1)[0].shape[0] == len(TEXTS)


def test_xarray_is_one_lazy_dataset_over_every_unit(views_cache, monkeypatch):
    cache = open_cache(views_cache)
    reads: list[tuple[str, int, int]] = []
    original = cache._segment_rows
    monkeypatch.setattr(cache, "_segment_rows", lambda seg, name, a, b: reads.append((name, a, b)) or original(
        seg, name, a, b))
    ds = cache.xarray("resid_post")
    assert reads == []  # building the Dataset reads no activation
    assert set(ds.data_vars) == {"layer_1", "layer_3"} and ds["layer_3"].dims == ("token", "feature")
    assert ds.sizes["token"] == cache.n_tokens
    one = ds["layer_1"][5:7].values
    assert one.shape == (2, cache.width("resid_post")) and 0 < len(reads) <= 2
    assert all(name == "resid_post/layer_1" for name, _, _ in reads)
    documents = ds["document"].values
    for doc in cache.documents():
        rows = np.flatnonzero(documents == doc.key)
        np.testing.assert_array_equal(ds["layer_3"].values[rows], cache.activations("resid_post", 3, doc.key))
        np.testing.assert_array_equal(ds["position"].values[rows], np.arange(doc.n_tokens))
        assert set(ds["topic"].values[rows]) == {doc.meta["topic"]} and set(ds["n"].values[rows]) == {doc.meta["n"]}
    picked = ds.isel(token=slice(-3, None))["layer_3"].values  # a lazy selection reads just its rows
    np.testing.assert_array_equal(picked, ds["layer_3"].values[-3:])
    assert ds["n"].dtype == np.int64 and ds["split"].dtype == object
