"""Documents' rows of one segment array, decoded straight from its chunk objects (`CacheReader.iter_activations`,
which every solver and analysis streams through).

zarr's generic read path costs several times the decoding itself (event loop, buffers, codec pipeline; see
chunk_codec.py), so this stream decodes each chunk that wanted documents overlap once with `ChunkDecoder`, on a few
threads, a bounded number of chunks ahead of the document being yielded, straight into those documents' rows (no
copy through a block; 1.25x the CPU efficiency of decoding whole chunks first, measured). It yields
what `array[start:stop]` would (the stored dtype; fp8/int8 codes decoded to float32) for each document;
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

    `require(start, stop)` runs before a document's rows are waited for (the reader's check that every chunk under
    them was written), so a missing chunk is reported for the document that needs it and no other. Each chunk is
    decoded once, straight into the rows of every wanted document it holds, at most `block_bytes` of chunks ahead
    of the consumer. Every document's rows are a fresh array, so a consumer may keep them.
    """
    chunks = _SegmentChunks(backend, array)
    locs = sorted(locs, key=lambda loc: loc.start)
    rows = chunks.rows
    holders: dict[int, list[int]] = {}  # chunk -> the wanted documents with rows in it
    for i, loc in enumerate(locs):
        for c in range(loc.start // rows, -(-loc.stop // rows)):
            holders.setdefault(c, []).append(i)
    needed = sorted(holders)
    outs: dict[int, np.ndarray] = {}  # document -> its rows, allocated when its first chunk is submitted
    ahead = max(1, block_bytes // chunks.chunk_bytes)
    threads = max(1, min(MAX_THREADS, os.cpu_count() or 1, len(needed)))
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="actcache-stream")
    decoding: dict[int, Future[None]] = {}
    submitted = 0
    try:
        for i, loc in enumerate(locs):
            require(loc.start, loc.stop)
            first, last = loc.start // rows, -(-loc.stop // rows)
            while submitted < len(needed) and (needed[submitted] < last or len(decoding) < ahead):
                c = needed[submitted]
                targets = []
                for j in holders[c]:
                    if j not in outs:
                        outs[j] = np.empty((locs[j].record.n_tokens, chunks.codes.width), chunks.dtype)
                    a, b = max(locs[j].start, c * rows), min(locs[j].stop, (c + 1) * rows)
                    targets.append((a - c * rows, b - c * rows, outs[j][a - locs[j].start:b - locs[j].start]))
                decoding[c] = pool.submit(chunks.decode_into, c, targets)
                submitted += 1
            for done in [c for c in decoding if c < first]:  # documents are in row order: no later one needs them
                del decoding[done]
            try:
                for c in range(first, last):
                    decoding[c].result()
            except CorruptCacheError as error:
                raise CorruptCacheError(f"{error} (document {loc.record.key})") from None
            # a document without tokens in no chunk has no rows allocated
            yield loc, outs.pop(i) if i in outs else np.empty((0, chunks.codes.width), chunks.dtype)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _SegmentChunks:
    """The decoders of one array's chunks (codes and side arrays for a scaled lossy array)."""

    def __init__(self, backend: StorageBackend, array: Any) -> None:
        scaled = isinstance(array, DequantizedArray)
        codes = array.codes if scaled else array
        self.codes = ChunkDecoder(codes, backend, codes.path)
        self.sides = [ChunkDecoder(side, backend, side.path) for side in array.sides] if scaled else []
        self.mode = array.mode if scaled else "exact"
        self.rows = self.codes.chunk_rows
        self.dtype = np.dtype(array.dtype)  # what `array[a:b]` gives
        self.chunk_bytes = self.rows * self.codes.width * self.dtype.itemsize

    def decode_into(self, index: int, targets: list[tuple[int, int, np.ndarray]]) -> None:
        """Decode chunk `index` once and write its rows [a, b) into each target `out` (a pool task)."""
        sides = [side.rows(index) for side in self.sides]  # before the codes: planes() reuses one buffer per thread
        planes = self.codes.planes(index)
        for a, b, out in targets:
            if not sides:
                self.codes.unshuffle(planes, a, b, out)
            else:
                out[:] = decode(self.codes.unshuffle_staged(planes, a, b), [side[a:b] for side in sides], self.mode)
