"""Round trips, append-only commits and plain-zarr readability of the cache format."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from actcache.storage import (
    CacheWriter,
    FingerprintMismatchError,
    NotACacheError,
    open_cache,
)
from storage_fixtures import WIDTHS, WrittenCache, make_fingerprint, write_unit


def test_every_document_reads_back_exactly(written_cache: WrittenCache) -> None:
    cache = open_cache(written_cache.path)
    assert [d.key for d in cache.documents()] == [d.key for d in written_cache.docs]
    for (hook, layer, key), rows in written_cache.values.items():
        np.testing.assert_array_equal(cache.activations(hook, layer, key), rows)
    for key, ids in written_cache.token_ids.items():
        np.testing.assert_array_equal(cache.token_ids(key), ids)
    doc = cache.document("unit-a-doc1")
    assert (doc.n_tokens, doc.meta) == (3000, {"source": "unit-a.txt", "index": 1})
    np.testing.assert_array_equal(cache.activations("attn_z", 3, "unit-a-doc1", span=(10, 20)),
                                  written_cache.values[("attn_z", 3, "unit-a-doc1")][10:20])


def test_streaming_yields_every_document_with_small_blocks(written_cache: WrittenCache) -> None:
    cache = open_cache(written_cache.path)
    seen = {doc.key: rows for doc, rows in cache.iter_activations("resid_post", 1, block_bytes=4096)}
    assert set(seen) == {d.key for d in written_cache.docs}
    for key, rows in seen.items():
        np.testing.assert_array_equal(rows, written_cache.values[("resid_post", 1, key)])
    subset = ["unit-b-doc1", "unit-a-doc0"]
    assert sorted(d.key for d, _ in cache.iter_activations("attn_z", 3, subset)) == sorted(subset)


def test_bfloat16_bits_round_trip_exactly(tmp_path) -> None:
    rng = np.random.default_rng(1)
    out = WrittenCache(tmp_path / "bf16", [], {}, {})
    writer = CacheWriter.open(out.path, make_fingerprint("bfloat16"))
    write_unit(writer, "u", [300, 7], rng, out)
    cache = open_cache(out.path)
    for (hook, layer, key), bits in out.values.items():
        tensor = cache.tensor(hook, layer, key)
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor.view(torch.int16), torch.from_numpy(bits.view(np.int16)))
        np.testing.assert_array_equal(cache.activations(hook, layer, key), tensor.float().numpy())


def test_writer_accepts_bf16_tensors(tmp_path) -> None:
    writer = CacheWriter.open(tmp_path / "c", make_fingerprint("bfloat16", layers=(0,)))
    values = {name: torch.randn(50, WIDTHS[name.split("/")[0]]).to(torch.bfloat16)
              for name in ("resid_post/layer_0", "attn_z/layer_0")}
    from actcache.storage import DocRecord

    docs = [DocRecord("k", 50)]
    segment = writer.begin_segment("u", docs, np.zeros(50, dtype=np.int64))
    seg_writer = writer.segment_writer(segment)
    for name, rows in values.items():
        seg_writer.append(name, rows)
    assert writer.commit("u", segment, docs, seg_writer.close())
    assert torch.equal(open_cache(tmp_path / "c").tensor("resid_post", 0, "k"), values["resid_post/layer_0"])


def test_uncommitted_segments_are_invisible(written_cache: WrittenCache) -> None:
    rng = np.random.default_rng(2)
    writer = CacheWriter.open(written_cache.path, make_fingerprint())
    ghost = WrittenCache(written_cache.path, [], {}, {})
    write_unit(writer, "unit-crashed", [64, 64], rng, ghost, commit=False)
    cache = open_cache(written_cache.path)
    assert "unit-crashed-doc0" not in {d.key for d in cache.documents()}
    assert cache.info()["uncommitted_segments"] == 1


def test_a_unit_commits_once(written_cache: WrittenCache) -> None:
    rng = np.random.default_rng(3)
    writer = CacheWriter.open(written_cache.path, make_fingerprint())
    again = WrittenCache(written_cache.path, [], {}, {})
    with pytest.raises(AssertionError):  # write_unit asserts that the commit won
        write_unit(writer, "unit-a", [5, 3000, 1, 40], rng, again)
    cache = open_cache(written_cache.path)
    assert cache.n_documents == len(written_cache.docs)
    np.testing.assert_array_equal(cache.activations("resid_post", 1, "unit-a-doc1"),
                                  written_cache.values[("resid_post", 1, "unit-a-doc1")])


def test_append_with_another_capture_spec_names_the_field(written_cache: WrittenCache) -> None:
    with pytest.raises(FingerprintMismatchError, match=r"capture\.layers \(cache: \[1,3\], now: \[1\]\)"):
        CacheWriter.open(written_cache.path, make_fingerprint(layers=(1,)))
    with pytest.raises(FingerprintMismatchError, match="dtype"):
        CacheWriter.open(written_cache.path, make_fingerprint("bfloat16"))


def test_paths_that_are_not_caches_are_refused_untouched(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(NotACacheError, match="not an actcache cache"):
        open_cache(tmp_path)
    with pytest.raises(NotACacheError, match="choose a new --out"):
        CacheWriter.open(tmp_path, make_fingerprint())
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_plain_zarr_and_xarray_read_the_cache(written_cache: WrittenCache) -> None:
    root = zarr.open_group(str(written_cache.path), mode="r")
    assert root.attrs["actcache"]["format_version"] == 1
    commit = json.loads(next((written_cache.path / "commits").glob("*.json")).read_text())
    segment = root[f"segments/{commit['segment']}"]
    array = segment["attn_z/layer_3"]
    assert array.metadata.dimension_names == ("token", "head_feature")
    assert [type(c).__name__ for c in array.metadata.codecs] == ["BytesCodec", "Shuffle", "ZstdCodec",
                                                                   "Crc32cCodec"]
    offsets = segment["doc_offsets"][:]
    key = commit["documents"][1]["key"]
    np.testing.assert_array_equal(array[offsets[1]:offsets[2]], written_cache.values[("attn_z", 3, key)])
    dataset = xr.open_zarr(str(written_cache.path), group=f"segments/{commit['segment']}/resid_post",
                           consolidated=False)
    assert dataset["layer_1"].dims == ("token", "d_model")
    assert dataset["layer_1"].shape == (offsets[-1], WIDTHS["resid_post"])


def test_gc_removes_only_uncommitted_segments_of_gone_writers(written_cache: WrittenCache) -> None:
    from actcache.storage.gc import collect_garbage

    writer = CacheWriter.open(written_cache.path, make_fingerprint())
    crashed = write_unit(writer, "unit-crashed", [64], np.random.default_rng(4),
                         WrittenCache(written_cache.path, [], {}, {}), commit=False)
    kept = collect_garbage(written_cache.path, older_than_s=0)  # its writer is alive: never by age alone
    assert kept.segments == [] and "its writer is alive" in kept.kept[crashed]
    writer.close()  # releases the claim: an unclaimed segment falls back to its age
    assert collect_garbage(written_cache.path, older_than_s=3600).segments == []
    assert collect_garbage(written_cache.path, older_than_s=0).segments == [crashed]
    cache = open_cache(written_cache.path)
    assert cache.info()["uncommitted_segments"] == 0 and cache.n_documents == len(written_cache.docs)
    from actcache.storage import verify_cache

    assert verify_cache(written_cache.path).ok
