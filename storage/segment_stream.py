"""Documents' rows of one segment array, decoded straight from its chunk objects (`CacheReader.iter_activations`,
which every solver and analysis streams through).

zarr's generic read path costs several times the decoding itself (event loop, buffers, codec pipeline; see
chunk_codec.py), so this stream decodes whole chunks with `ChunkDecoder` on a few threads, a bounded number of
chunks ahead of the document being yielded, and reads only the chunks that wanted documents overlap. It yields
what `array[start:stop]` would (the stored dtype; float32 codes times scales for fp8/int8) for each document;
its tests compare with zarr's own reads, bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from .chunk_codec import ChunkDecoder
from .errors import CorruptCacheError
from .lossy import DequantizedArray, decode

if TYPE_CHECKING:
    from .backends import StorageBackend
    from .index import DocLocation

__all__ = ["stream_segment"]

MAX_THREADS = 4  # decoding threads per stream: two already keep ahead of a solver on this 2-core machine


def stream_segment(backend: StorageBackend, array: Any, locs: Sequence[DocLocation], block_bytes: int,
                   require: Callable[[int, int], None]) -> Iterator[tuple[DocLocation, np.ndarray]]:
    """(location, stored rows) of `locs` in row order: a zarr activation array of one segment, or the
    `DequantizedArray` of a scaled lossy one, read through `backend` (keys: the arrays' paths in the cache).

    `require(start, stop)` runs before a document's rows are decoded (the reader's check that every chunk under
    them was written), so a missing chunk is reported for the document that needs it and no other. At most
    `block_bytes` of decoded chunks are held ahead of the consumer. Rows are fresh arrays or views of them, never
    of a reused buffer, so a consumer may keep them.
    """
    chunks = _SegmentChunks(backend, array)
    locs = sorted(locs, key=lambda loc: loc.start)
    needed = sorted({c for loc in locs for c in range(loc.start // chunks.rows, -(-loc.stop // chunks.rows))})
    ahead = max(1, block_bytes // chunks.chunk_bytes)
    threads = max(1, min(MAX_THREADS, os.cpu_count() or 1, len(needed)))
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="actcache-stream")
    decoding: dict[int, Future[np.ndarray]] = {}
    submitted = 0
    try:
        for loc in locs:
            require(loc.start, loc.stop)
            first, last = loc.start // chunks.rows, -(-loc.stop // chunks.rows)
            while submitted < len(needed) and (needed[submitted] < last or len(decoding) < ahead):
                decoding[needed[submitted]] = pool.submit(chunks.decode, needed[submitted])
                submitted += 1
            for done in [c for c in decoding if c < first]:
                del decoding[done]
            try:
                parts = [decoding[c].result() for c in range(first, last)]
            except CorruptCacheError as error:
                raise CorruptCacheError(f"{error} (document {loc.record.key})") from None
            lo = loc.start - first * chunks.rows
            if not parts:  # a document without tokens
                yield loc, np.empty((0, chunks.codes.width), chunks.dtype)
            elif len(parts) == 1:
                yield loc, parts[0][lo:lo + loc.record.n_tokens]
            else:
                yield loc, np.concatenate(parts)[lo:lo + loc.record.n_tokens]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _SegmentChunks:
    """Whole decoded chunks of one array (codes and scales for a scaled lossy array)."""

    def __init__(self, backend: StorageBackend, array: Any) -> None:
        scaled = isinstance(array, DequantizedArray)
        codes = array.codes if scaled else array
        self.codes = ChunkDecoder(codes, backend, codes.path)
        self.scales = ChunkDecoder(array.scales, backend, array.scales.path) if scaled else None
        self.mode = array.mode if scaled else "exact"
        self.n_rows = int(codes.shape[0])
        self.rows = self.codes.chunk_rows
        self.dtype = np.dtype(array.dtype)  # what `array[a:b]` gives
        self.chunk_bytes = self.rows * self.codes.width * self.dtype.itemsize

    def decode(self, index: int) -> np.ndarray:
        """Chunk `index`'s rows (the last chunk cut at the array's end), in a fresh array (a pool task)."""
        rows = min(self.rows, self.n_rows - index * self.rows)
        codes = np.empty((rows, self.codes.width), self.codes.dtype)
        self.codes.unshuffle(self.codes.planes(index), 0, rows, codes)
        if self.scales is None:
            return codes
        scales = np.empty((rows, 1), self.scales.dtype)
        self.scales.unshuffle(self.scales.planes(index), 0, rows, scales)
        return decode(codes, scales, self.mode)
