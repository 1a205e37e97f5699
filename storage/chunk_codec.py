"""Encode one activation chunk exactly as its array's codec chain would, without zarr's per-call machinery.

zarr's generic write path (event loop, buffers, codec pipeline) costs about 2.7x the compression itself on this
machine (~100 vs ~270 MB per CPU-second for 1 MiB chunks): too much beside a forward pass. Writers therefore
encode whole chunks here with the same numcodecs objects zarr uses and store them under zarr's chunk keys; zarr
remains the reader, and every test reads what this wrote through zarr. The token loader and the solvers' streams
decode whole chunks the same way (`ChunkDecoder`: zarr's read path has the same overhead), reading chunk objects
through the cache's `StorageBackend` so that a cache on s3:// reads as one on a disk; their tests compare with
zarr's reads.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import crc32c
import google_crc32c
import numpy as np
import zarr
from numcodecs import Shuffle, Zstd
from numcodecs.zstd import decompress as zstd_decompress
from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec
from zarr.codecs.numcodecs import Shuffle as ZarrShuffle

from .errors import CorruptCacheError
from .layout import chunk_key

if TYPE_CHECKING:
    from .backends import StorageBackend

__all__ = ["ChunkDecoder", "ChunkEncoder"]


def _activation_codecs(array: zarr.Array, where: str) -> list:
    """The codecs of an activation array, refused unless they are the chain this module writes and reads."""
    codecs = list(array.metadata.codecs)  # type: ignore[union-attr]
    kinds = [type(c) for c in codecs]
    if kinds != [BytesCodec, ZarrShuffle, ZstdCodec, Crc32cCodec] or codecs[2].checksum:
        raise ValueError(f"{where}: unexpected codec chain {kinds}; this cache was not written by actcache")
    return codecs


class ChunkEncoder:
    """bytes (little endian) -> numcodecs.shuffle -> zstd -> crc32c, the chain `CacheWriter` gives activations."""

    def __init__(self, array: zarr.Array, backend: StorageBackend, key: str) -> None:
        codecs = _activation_codecs(array, f"{backend.url}/{key}")
        self.chunk_rows = int(array.chunks[0])
        self.width = int(array.shape[1])
        self.dtype = np.dtype(array.dtype).newbyteorder("<")
        self.fill = np.array(array.fill_value, dtype=self.dtype)
        self.backend, self.key = backend, key
        self._shuffle = Shuffle(elementsize=self.dtype.itemsize)
        self._zstd = Zstd(level=codecs[2].level, checksum=False)

    def encode(self, rows: np.ndarray) -> bytes:
        """One chunk's stored bytes; a short last chunk is padded with the fill value, as zarr stores edge chunks."""
        if len(rows) < self.chunk_rows:
            padded = np.empty((self.chunk_rows, self.width), self.dtype)
            padded[: len(rows)] = rows
            padded[len(rows):] = self.fill
            rows = padded
        payload = self._zstd.encode(self._shuffle.encode(np.ascontiguousarray(rows, dtype=self.dtype)))
        checksum = np.uint32(google_crc32c.value(bytes(payload))).tobytes()
        return bytes(payload) + checksum

    def write(self, chunk_index: int, rows: np.ndarray) -> int:
        """Store one chunk under zarr's default v3 key (`layout.chunk_key`), made durable on the writer's own thread
        (on a disk: fsynced) so that a commit never waits for a unit's worth of dirty pages; its stored length."""
        stored = self.encode(rows)
        self.backend.put_unpublished(f"{self.key}/{chunk_key(chunk_index)}", stored)
        return len(stored)


_SCRATCH = threading.local()


def _scratch(purpose: str, nbytes: int) -> np.ndarray:
    """A byte buffer of the calling thread for `purpose`, reused across calls (grown when too small)."""
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    buffer = buffers.get(purpose)
    if buffer is None or len(buffer) < nbytes:
        buffer = buffers[purpose] = np.empty(nbytes, np.uint8)
    return buffer[:nbytes]


class ChunkDecoder:
    """The inverse chain for readers that need speed (the token loader, the solvers' streams): object -> crc32c
    check -> zstd -> unshuffle.

    Every step but the first check runs without the GIL (file reads, zstd, numpy byte copies), so decoding threads
    scale with cores; numcodecs' own unshuffle holds the GIL (measured: no gain from a second thread), hence the
    byte-plane copies below. A missing chunk object or a bad checksum is a CorruptCacheError, never NaN fill.
    """

    def __init__(self, array: zarr.Array, backend: StorageBackend, key: str) -> None:
        """`key`: the array's key under the backend's root (`segments/<id>/<hook>/layer_<L>`)."""
        _activation_codecs(array, f"{backend.url}/{key}")
        self.chunk_rows = int(array.chunks[0])
        self.width = int(array.shape[1])
        self.dtype = np.dtype(array.dtype).newbyteorder("<")
        self.backend = backend
        self.key = key

    def planes(self, chunk_index: int) -> np.ndarray:
        """The chunk's decompressed bytes as [itemsize, chunk_rows * width] byte planes (the shuffled layout).

        Stored bytes and planes live in buffers of the calling thread, valid until its next call: a fresh megabyte
        per chunk would cost more in page faults than zstd costs (measured: ~2x the decode time in kernel time).
        """
        key = f"{self.key}/{chunk_key(chunk_index)}"
        where = f"{self.backend.url}/{key}"
        size = self.dtype.itemsize
        nbytes = self.chunk_rows * self.width * size
        stored = _scratch("file", nbytes + (nbytes >> 4) + 1024)  # zstd's worst case is ~nbytes + nbytes/256
        try:
            length = self.backend.read_into(key, stored.data)
        except FileNotFoundError:
            raise CorruptCacheError(f"{where} is missing but its unit is committed: run `actcache verify "
                                    f"{self.backend.url}` to list the damaged documents") from None
        except ValueError:  # the buffer holds the largest frame a chunk of this array can compress to
            raise CorruptCacheError(f"{where} is larger than a chunk of {self.chunk_rows}x{self.width} values can "
                                    "be: run `actcache verify` on the cache") from None
        payload = stored.data[:length - 4]
        if length < 4 or crc32c.crc32c(payload) != int.from_bytes(
                stored[length - 4:length], "little"):
            raise CorruptCacheError(f"{where}: crc32c checksum mismatch: run `actcache verify` on the cache")
        raw = _scratch("planes", nbytes)
        try:  # the checksum vouches for the bytes; zstd refuses a frame larger than a chunk
            zstd_decompress(payload, raw)  # what Zstd.decode calls, less its ~12 us of buffer checks
        except (RuntimeError, ValueError) as error:
            raise CorruptCacheError(f"{where}: does not decode to {self.chunk_rows}x{self.width} values of {size} "
                                    f"bytes ({error}): run `actcache verify` on the cache") from None
        return raw.reshape(size, -1)

    def rows(self, chunk_index: int) -> np.ndarray:
        """Every row of a chunk in a fresh array (for small arrays read beside others: lossy scales, outliers)."""
        out = np.empty((self.chunk_rows, self.width), self.dtype)
        self.unshuffle(self.planes(chunk_index), 0, self.chunk_rows, out)
        return out

    def unshuffle_staged(self, planes: np.ndarray, start: int, stop: int) -> np.ndarray:
        """The chunk's rows [start, stop) in a buffer of the calling thread, valid until its next call: for readers
        that move the rows on (a shuffle's scatter, a lossy decode) rather than keep them."""
        staged = _scratch("rows", (stop - start) * self.width * self.dtype.itemsize)
        rows = staged.view(self.dtype).reshape(stop - start, self.width)
        self.unshuffle(planes, start, stop, rows)
        return rows

    def unshuffle(self, planes: np.ndarray, start: int, stop: int, out: np.ndarray) -> None:
        """Write the chunk's rows [start, stop) into `out` ([stop - start, width], C-contiguous, stored dtype).

        Each value is rebuilt from its bytes with shifts and ors on unsigned words (little endian: plane 0 holds
        the lowest byte), ~20% faster than byte-strided copies and, like them, without the GIL. 4-byte values are
        built from two 16-bit halves (in a buffer of the calling thread): 7 passes, 3 of them over `out`, cost
        ~15% less than 7 passes over `out`.
        """
        size = self.dtype.itemsize
        lo, hi = start * self.width, stop * self.width
        words = out.reshape(-1).view(np.dtype(f"<u{size}"))
        if size == 4:
            halves = _scratch("halves", 4 * (hi - lo)).view("<u2").reshape(2, -1)
            _combine(halves[0], planes[3, lo:hi], planes[2, lo:hi])
            _combine(halves[1], planes[1, lo:hi], planes[0, lo:hi])
            _combine(words, halves[0], halves[1])
            return
        np.copyto(words, planes[size - 1, lo:hi])
        for byte in range(size - 2, -1, -1):
            words <<= 8
            words |= planes[byte, lo:hi]


def _combine(out: np.ndarray, high: np.ndarray, low: np.ndarray) -> None:
    """out = high << bits(low) | low, elementwise, for unsigned words `out` twice as wide as `high` and `low`."""
    np.copyto(out, high)
    out <<= 8 * low.itemsize
    out |= low
