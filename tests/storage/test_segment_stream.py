"""The fast streaming read (`iter_activations` through storage/segment_stream.py, and the token loader): the same
rows as zarr's own reads, only the chunks that wanted documents overlap, every chunk object read through the
cache's backend, so that a cache on S3 streams and trains exactly as one on a disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from actcache.storage import CacheError, CacheWriter, open_cache
from actcache.storage.backends import LocalBackend
from actcache.storage.layout import activation_name, chunk_key, segment_path
from storage_fixtures import WrittenCache, make_fingerprint, write_unit
from torch.utils.data import DataLoader

CHUNK_ROWS = 32
LENGTHS = ([5, 300, 1, 40, 77], [700, 9, 13, 64, 31])


class RecordingBackend(LocalBackend):
    """A LocalBackend that also notes every object read into a buffer (the fast path's only read)."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.read: list[str] = []

    def read_into(self, key: str, buffer: memoryview) -> int:
        self.read.append(key)
        return super().read_into(key, buffer)


def _write(location: str) -> WrittenCache:
    out = WrittenCache(location, [], {}, {})  # type: ignore[arg-type]
    with CacheWriter.open(location, make_fingerprint()) as writer:
        rng = np.random.default_rng(0)
        for unit, lengths in zip(("unit-a", "unit-b"), LENGTHS, strict=True):
            write_unit(writer, unit, lengths, rng, out)
    return out


@pytest.fixture()
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """32-row chunks: documents start and end inside chunks and span up to 23 of them."""
    monkeypatch.setattr("actcache.storage.writer.chunk_tokens_for", lambda width, itemsize: CHUNK_ROWS)


def _zarr_rows(path: Path, hook: str, layer: int) -> dict[str, np.ndarray]:
    """Every document's rows read with plain zarr, the reference the fast path must equal bit for bit."""
    reader = open_cache(path)
    out = {}
    for record in reader.commit_records():
        array = zarr.open_array(path / segment_path(record.segment) / activation_name(hook, layer), mode="r")
        start = 0
        for doc in record.documents:
            out[doc.key] = np.asarray(array[start:start + doc.n_tokens])
            start += doc.n_tokens
    return out


@pytest.mark.parametrize("block_bytes", [1, 3 * CHUNK_ROWS * 16 * 4, 64 << 20])
def test_streamed_rows_are_zarrs_reading_each_needed_chunk_once(tmp_path: Path, small_chunks: None,
                                                                block_bytes: int) -> None:
    cache = _write(str(tmp_path / "cache"))
    reference = _zarr_rows(tmp_path / "cache", "resid_post", 3)
    reader = open_cache(tmp_path / "cache")
    reader.backend = recording = RecordingBackend(str(tmp_path / "cache"))
    keys = [d.key for d in cache.docs]
    for wanted in (None, keys[1::2], [keys[3]]):
        recording.read.clear()
        got = list(reader.iter_activations("resid_post", 3, wanted, block_bytes=block_bytes))
        assert [d.key for d, _ in got] == (keys if wanted is None else [k for k in keys if k in wanted])
        for doc, rows in got:
            assert rows.dtype == np.float32
            np.testing.assert_array_equal(rows, reference[doc.key])
        expected_chunks = set()
        for record in reader.commit_records():
            start = 0
            for doc in record.documents:
                if wanted is None or doc.key in wanted:
                    for chunk in range(start // CHUNK_ROWS, -(-(start + doc.n_tokens) // CHUNK_ROWS)):
                        expected_chunks.add(f"{segment_path(record.segment)}/resid_post/layer_3/{chunk_key(chunk)}")
                start += doc.n_tokens
        assert sorted(recording.read) == sorted(expected_chunks)  # each once, and no other


def test_an_s3_cache_streams_and_trains_as_the_same_cache_on_disk(tmp_path: Path, s3_url: str,
                                                                  small_chunks: None) -> None:
    local, remote = _write(str(tmp_path / "cache")), _write(f"{s3_url}/cache")
    readers = open_cache(local.path), open_cache(remote.path)
    assert readers[1].url.startswith("s3://")
    on_disk, in_bucket = ([(d.key, rows) for d, rows in r.iter_activations("attn_z", 3, block_bytes=4096)]
                          for r in readers)
    assert [k for k, _ in on_disk] == [k for k, _ in in_bucket] == [d.key for d in local.docs]
    for (_, a), (_, b) in zip(on_disk, in_bucket, strict=True):
        np.testing.assert_array_equal(a, b)
    for shuffle in (False, True):
        disk, bucket = ([{k: v.numpy() for k, v in batch.items()} for batch in r.tokens(
            batch_size=100, buffer_tokens=400, shuffle=shuffle, threads=2)] for r in readers)
        assert len(disk) == len(bucket) == 13
        for a, b in zip(disk, bucket, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])
    # DataLoader workers on S3 are spawned (obstore's runtime does not survive a fork; a forked worker says so)
    dataset = readers[1].tokens(batch_size=100, buffer_tokens=400, shuffle=False)
    with pytest.raises(CacheError, match="multiprocessing_context='spawn'"):
        next(iter(DataLoader(dataset, batch_size=None, num_workers=1, multiprocessing_context="fork")))
    workers = DataLoader(dataset, batch_size=None, num_workers=2, multiprocessing_context="spawn")
    in_workers = [{k: v.numpy() for k, v in batch.items()} for batch in workers]
    in_process = [{k: v.numpy() for k, v in batch.items()} for batch in readers[0].tokens(
        batch_size=100, buffer_tokens=400, shuffle=False)]
    assert len(in_workers) == len(in_process) == 13
    for a, b in zip(in_workers, in_process, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
