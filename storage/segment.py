"""Streaming, chunk-aligned writes of one segment's activation arrays, compressed beside the caller's work.

A segment belongs to exactly one writer per array: the arrays' metadata is created up front by the cache writer,
and each `SegmentWriter` (one per process or pipeline stage) fills only the arrays it was given, whole chunks at a
time, so no two writers ever touch the same chunk.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from .chunk_codec import ChunkEncoder
from .dtypes import to_storage, widen_to_float32
from .errors import as_write_error
from .hook_points import array_dtype
from .layout import parse_activation_name, segment_path
from .lossy import decode, encode, row_errors, sides_of, summarize
from .records import ArrayManifest
from .root import child_array

if TYPE_CHECKING:
    from .backends.backend import StorageBackend

__all__ = ["SegmentWriter"]


class _ArrayStream:
    """Rows waiting for a whole chunk, and the next row to write."""

    def __init__(self, array: zarr.Array, backend: StorageBackend, key: str, dtype: str) -> None:
        self.array = array
        self.dtype = dtype  # the values' true dtype (the cache's, or the hook's own, e.g. int16 expert ids)
        self.mode = str(array.attrs.get("actcache_store_as", "exact"))  # lossy codes: storage/lossy.py
        self.errors: list[tuple[np.ndarray, np.ndarray]] = []  # a lossy array's (rel. L2 error, cosine) per row
        self.non_finite = 0
        self.encoder = ChunkEncoder(array, backend, key)
        self.chunk_rows = int(array.chunks[0])
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0
        self.offset = 0  # first row not yet handed to a write
        self.stored_bytes = 0  # of the chunks written so far (their commit record's `bytes`)

    def take(self, final: bool) -> tuple[int, np.ndarray] | None:
        rows = self.pending_rows if final else (self.pending_rows // self.chunk_rows) * self.chunk_rows
        if rows == 0:
            return None
        block = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        out, rest = block[:rows], block[rows:]
        self.pending = [rest] if len(rest) else []
        self.pending_rows = len(rest)
        start = self.offset
        self.offset += rows
        return start, out


class SegmentWriter:
    """Appends rows to a segment's arrays in token order; `close()` waits for every write and returns manifests.

    Writes run on `threads` background threads (zstd and crc32c release the GIL), with at most `max_pending`
    blocks queued so that a slow disk slows the producer instead of filling memory.
    """

    def __init__(self, backend: StorageBackend, segment_id: str, names: list[str], dtype: str, *,
                 threads: int = 2, max_pending: int = 16) -> None:
        group = zarr.open_group(backend.zarr_store(read_only=False), path=segment_path(segment_id), mode="r+")
        folder = segment_path(segment_id)
        self.segment_id = segment_id
        self.dtype = dtype
        self._streams = {name: _ArrayStream(child_array(group, name), backend, f"{folder}/{name}",
                                            array_dtype(parse_activation_name(name)[0], dtype)) for name in names}
        self._sides: dict[str, list[_ArrayStream]] = {}  # array name -> its scales and outliers (fp8, int8)
        for name in names:
            self._sides[name] = []
            for side in sides_of(self._streams[name].array.attrs):
                array = child_array(group, side)
                self._streams[side] = _ArrayStream(array, backend, f"{folder}/{side}", str(array.dtype))
                self._sides[name].append(self._streams[side])
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"seg-{segment_id[:8]}")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._futures: list[Future[Any]] = []
        self._bytes_lock = threading.Lock()  # writer threads add their chunks' stored sizes
        self._closed = False

    def append(self, name: str, rows: Any) -> None:
        """Queue the next rows of array `name` (numpy, or a torch tensor in the array's dtype)."""
        stream = self._streams[name]
        block = to_storage(rows, stream.dtype)
        if block.ndim != 2 or block.shape[1] != stream.array.shape[1]:
            raise ValueError(f"{name}: expected rows of width {stream.array.shape[1]}, got shape {block.shape}")
        if stream.offset + stream.pending_rows + len(block) > stream.array.shape[0]:
            raise ValueError(f"{name}: more rows than the segment's {stream.array.shape[0]} tokens")
        if stream.mode != "exact":  # encode, and measure what readers will get against the exact rows in hand
            exact = widen_to_float32(block, stream.dtype)
            sides = self._sides[name]
            outliers = int(sides[1].array.shape[1]) if len(sides) > 1 else 0  # the outlier arrays' width
            block, values = encode(exact, stream.mode, outliers)
            stream.errors.append(row_errors(exact, decode(block, values, stream.mode)))
            stream.non_finite += int((~np.isfinite(exact).all(axis=1)).sum())
            for side, rows_of_side in zip(sides, values, strict=True):
                self._queue(side, rows_of_side)
        self._queue(stream, block)

    def _queue(self, stream: _ArrayStream, block: np.ndarray) -> None:
        stream.pending.append(np.ascontiguousarray(block))
        stream.pending_rows += len(block)
        self._flush(stream, final=False)

    def _flush(self, stream: _ArrayStream, final: bool) -> None:
        taken = stream.take(final)
        if taken is None:
            return
        self._raise_failed()
        start, block = taken
        self._slots.acquire()
        future = self._pool.submit(self._write, stream, start, block)
        self._futures.append(future)

    def _write(self, stream: _ArrayStream, start: int, block: np.ndarray) -> None:
        try:
            rows = stream.chunk_rows
            for offset in range(0, len(block), rows):  # `start` is always chunk-aligned
                stored = stream.encoder.write((start + offset) // rows, block[offset:offset + rows])
                with self._bytes_lock:
                    stream.stored_bytes += stored
        finally:
            self._slots.release()

    def _raise_failed(self) -> None:
        done = [f for f in self._futures if f.done()]
        self._futures = [f for f in self._futures if not f.done()]
        for future in done:
            _reraise(future, self.segment_id)

    def close(self) -> list[ArrayManifest]:
        """Write the last partial chunks, wait for every write, and describe what was written."""
        if self._closed:
            raise RuntimeError("segment writer already closed")
        self._closed = True
        try:
            for stream in self._streams.values():
                self._flush(stream, final=True)
            for future in self._futures:
                _reraise(future, self.segment_id)
        finally:
            self._pool.shutdown(wait=True)
        manifests = []
        for name, stream in self._streams.items():
            if stream.offset != stream.array.shape[0]:
                raise ValueError(f"{name}: wrote {stream.offset} of {stream.array.shape[0]} rows")
            n_chunks = -(-stream.array.shape[0] // stream.chunk_rows)
            error = None
            if stream.mode != "exact":
                rel, cosine = (np.concatenate(part) for part in zip(*stream.errors, strict=True)) if stream.errors \
                    else (np.empty(0), np.empty(0))
                error = summarize(rel, cosine, stream.non_finite)
            manifests.append(ArrayManifest(name, tuple(stream.array.shape), stream.chunk_rows, n_chunks, error,
                                           stream.stored_bytes))
        return manifests

    def abort(self) -> None:
        """Stop without committing: what was written stays invisible garbage."""
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)


def _reraise(future: Future[Any], segment_id: str) -> None:
    error = future.exception()
    if error is None:
        return
    user_error = as_write_error(error, f"segment {segment_id}")
    if user_error is not None:
        raise user_error from error
    raise error
