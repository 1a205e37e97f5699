"""Reads never hand out what was not written: a missing chunk is an error for every dtype, non-finite values are
refused on request, and chunk files are durable before their commit record is published."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from actcache.storage import (
    CacheFingerprint,
    CacheWriter,
    CaptureSpec,
    CorruptCacheError,
    DocRecord,
    NonFiniteError,
    open_cache,
    verify_cache,
)
from actcache.storage.backends import open_backend
from actcache.storage.chunk_codec import ChunkEncoder
from actcache.storage.layout import activation_name, chunk_key
from actcache.storage.root import child_array, open_root
from storage_fixtures import WrittenCache, make_fingerprint, write_unit


@pytest.fixture()
def three_chunk_cache(tmp_path: Path) -> tuple[WrittenCache, str]:
    """One unit of 40,000 tokens: resid_post (16 float32 columns, 16,384 rows a chunk) spans three chunks."""
    out = WrittenCache(tmp_path / "cache", [], {}, {})
    writer = CacheWriter.open(out.path, make_fingerprint(layers=(1,)))
    segment = write_unit(writer, "unit", [20000, 1000, 19000], np.random.default_rng(0), out)
    return out, segment


def _array_folder(cache: WrittenCache, segment: str, name: str) -> Path:
    return cache.path / "segments" / segment / name


def test_a_missing_chunk_is_an_error_naming_hook_layer_and_documents(three_chunk_cache) -> None:
    cache, segment = three_chunk_cache
    os.remove(_array_folder(cache, segment, "resid_post/layer_1") / chunk_key(2))  # rows 32768.. (last document)
    reader = open_cache(cache.path)
    first, middle, last = (d.key for d in cache.docs)
    with pytest.raises(CorruptCacheError) as error:
        reader.activations("resid_post", 1, last)
    message = str(error.value)
    assert message.startswith("resid_post layer 1: chunk(s) 2 of committed unit unit are missing")
    assert f"(documents {last} (unit.txt))" in message and first not in message and middle not in message
    assert f"actcache verify {cache.path}" in message and "\n" not in message
    with pytest.raises(CorruptCacheError, match=f"resid_post layer 1: chunk.*documents {last} "):
        list(reader.iter_activations("resid_post", 1))
    with pytest.raises(CorruptCacheError):
        reader.activations("resid_post", 1, last, span=(18000, 18001))
    # what does not touch the missing chunk still reads, exactly
    for key, span in ((first, None), (middle, None), (last, (0, 32768 - 21000))):
        expected = cache.values[("resid_post", 1, key)]
        np.testing.assert_array_equal(reader.activations("resid_post", 1, key, span=span),
                                      expected if span is None else expected[span[0]:span[1]])
    assert [d.key for d, _ in reader.iter_activations("resid_post", 1, [first, middle])] == [first, middle]
    np.testing.assert_array_equal(reader.activations("attn_z", 1, last), cache.values[("attn_z", 1, last)])
    assert not verify_cache(cache.path).ok


def test_a_missing_chunk_of_an_integer_array_is_an_error_too(three_chunk_cache) -> None:
    """token_ids hold no NaN: a missing chunk would read as zeros, silently."""
    cache, segment = three_chunk_cache
    os.remove(_array_folder(cache, segment, "token_ids") / "c" / "0")
    with pytest.raises(CorruptCacheError, match="^token_ids: chunk\\(s\\) 0 of committed unit unit are missing"):
        open_cache(cache.path).token_ids(cache.docs[0].key)


def test_a_missing_chunk_of_integer_expert_ids_is_an_error(tmp_path: Path) -> None:
    """router_experts are stored as int16 expert ids, where a missing chunk has no NaN to show."""
    fingerprint = CacheFingerprint(model={"architecture": "MoE", "config": {}}, tokenizer={"t": 1}, dtype="bfloat16",
                                   capture=CaptureSpec(("router_experts",), (0,), 4096), widths={"router_experts": 2})
    writer = CacheWriter.open(tmp_path / "cache", fingerprint)
    docs = [DocRecord("a", 5), DocRecord("b", 3)]
    segment = writer.begin_segment("u", docs, np.zeros(8, np.int32))
    rows = writer.segment_writer(segment)
    rows.append(activation_name("router_experts", 0), np.arange(16, dtype=np.int16).reshape(8, 2))
    assert writer.commit("u", segment, docs, rows.close())
    np.testing.assert_array_equal(open_cache(tmp_path / "cache").activations("router_experts", 0, "b"),
                                  np.arange(10, 16).reshape(3, 2))
    os.remove(tmp_path / "cache" / "segments" / segment / activation_name("router_experts", 0) / chunk_key(0))
    with pytest.raises(CorruptCacheError, match="^router_experts layer 0: chunk\\(s\\) 0 .*documents a, b\\)"):
        open_cache(tmp_path / "cache").activations("router_experts", 0, "b")


def test_a_missing_bfloat16_chunk_is_an_error(tmp_path: Path) -> None:
    out = WrittenCache(tmp_path / "cache", [], {}, {})
    segment = write_unit(CacheWriter.open(out.path, make_fingerprint("bfloat16")), "u", [30], np.random.default_rng(1),
                         out)
    os.remove(_array_folder(out, segment, "attn_z/layer_3") / chunk_key(0))
    with pytest.raises(CorruptCacheError, match="attn_z layer 3"):
        open_cache(out.path).tensor("attn_z", 3, out.docs[0].key)


def _poison(cache: WrittenCache, segment: str, name: str, row: int, value: float) -> None:
    """Rewrite the chunk holding `row` with `value` at that row and a valid checksum: damage verify cannot see,
    like an overflow in the model."""
    backend = open_backend(cache.path)
    group, _ = open_root(backend)
    array = child_array(group, f"segments/{segment}/{name}")
    rows = int(array.chunks[0])
    index = row // rows
    block = np.asarray(array[index * rows:(index + 1) * rows]).copy()
    block[row - index * rows, 3] = value
    ChunkEncoder(array, backend, f"segments/{segment}/{name}").write(index, block)


def test_non_finite_values_are_refused_on_request_naming_every_such_document(three_chunk_cache) -> None:
    cache, segment = three_chunk_cache
    _poison(cache, segment, "resid_post/layer_1", 5, np.nan)  # first document
    _poison(cache, segment, "resid_post/layer_1", 39000, np.inf)  # last document
    assert verify_cache(cache.path).ok  # checksums hold
    reader = open_cache(cache.path)
    first, middle, last = (d.key for d in cache.docs)
    assert np.isnan(reader.activations("resid_post", 1, first)[5, 3])  # a plain read returns what is stored
    with pytest.raises(NonFiniteError) as error:
        list(reader.iter_activations("resid_post", 1, check_finite=True))
    message = str(error.value)
    assert message.startswith(f"resid_post layer 1: non-finite values (NaN/inf) in documents {first} (unit.txt), "
                              f"{last} (unit.txt) of {cache.path}")
    assert middle not in message and f"actcache verify {cache.path}" in message
    with pytest.raises(NonFiniteError, match=f"in documents {last} "):
        reader.activations("resid_post", 1, last, check_finite=True)
    assert reader.activations("resid_post", 1, middle, check_finite=True).shape == (1000, 16)
    assert len(list(reader.iter_activations("resid_post", 1, [middle], check_finite=True))) == 1


def test_chunks_and_folders_are_fsynced_before_the_commit_record_is_linked(tmp_path: Path, monkeypatch) -> None:
    """A power loss cannot be simulated here, so record the order of the durability calls themselves."""
    events: list[tuple[str, str]] = []
    real_fsync, real_link = os.fsync, os.link

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def link(src: str, dst: str) -> None:
        real_link(src, dst)
        events.append(("link", str(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    out = WrittenCache(tmp_path / "cache", [], {}, {})
    segment = write_unit(CacheWriter.open(out.path, make_fingerprint()), "unit", [40], np.random.default_rng(2), out)
    published = [i for i, (kind, where) in enumerate(events) if kind == "link" and where.endswith("commits/unit.json")]
    assert len(published) == 1
    before = {where for kind, where in events[:published[0]] if kind == "fsync"}
    seg = out.path / "segments" / segment
    files = {str(p) for p in seg.rglob("*") if p.is_file()}
    folders = {str(p) for p in seg.rglob("*") if p.is_dir()} | {str(seg), str(out.path / "segments")}
    chunks = {f for f in files if "/c/" in f and "/layer_" in f}
    assert len(chunks) == 4 and files <= before and folders <= before
    after = {where for kind, where in events[published[0]:] if kind == "fsync"}
    assert str(out.path / "commits") in after  # the new record's folder entry
