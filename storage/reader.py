"""Read-only access to a cache: by document, or streamed chunk by chunk with bounded memory."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from .commit_log import LocalCommitLog
from .dtypes import storage_dtype, to_torch, widen_to_float32
from .errors import CacheError
from .index import CommitIndex, CommitRecord, DocLocation
from .layout import COMMITS, TOKEN_IDS, activation_name, segment_path
from .root import open_root

if TYPE_CHECKING:
    import torch

__all__ = ["Document", "CacheReader", "open_cache"]

STREAM_BLOCK_BYTES = 64 << 20


@dataclass(frozen=True)
class Document:
    """A committed document: content key, labels, real token count (and its count before truncation)."""

    key: str
    meta: dict[str, Any]
    n_tokens: int
    original_tokens: int


def open_cache(path: str | Path) -> CacheReader:
    """A read-only handle on the committed contents of a cache."""
    return CacheReader(path)


class CacheReader:
    """Committed documents only: a unit being written, or left by a crashed writer, is invisible."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._group, self.fingerprint = open_root(self.path)
        self._index = CommitIndex.load(LocalCommitLog(self.path / COMMITS))
        self._arrays: dict[tuple[str, str], zarr.Array] = {}

    # -- what is in the cache -------------------------------------------------------------------------------
    @property
    def dtype(self) -> str:
        return self.fingerprint.dtype

    @property
    def hooks(self) -> tuple[str, ...]:
        return self.fingerprint.capture.hooks

    @property
    def layers(self) -> tuple[int, ...]:
        return self.fingerprint.capture.layers

    @property
    def model_source(self) -> dict[str, Any] | None:
        """Where the model's weights were when the cache was created (for solvers that read W_O or W_down)."""
        header = self._group.attrs.get("actcache", {})
        return header.get("model_source") if isinstance(header, dict) else None

    def width(self, hook: str) -> int:
        self._check_hook_layer(hook, None)
        return self.fingerprint.widths[hook]

    def head_shape(self, hook: str = "attn_z") -> tuple[int, int]:
        """(n_heads, head_dim) of a per-head hook, to view its rows as [tokens, heads, head_dim]."""
        attrs = self.fingerprint.hook_attrs.get(hook, {})
        if "n_heads" not in attrs:
            raise CacheError(f"hook {hook!r} has no head shape; per-head views exist for attn_z")
        return int(attrs["n_heads"]), int(attrs["head_dim"])

    @cached_property
    def _documents(self) -> list[Document]:
        return [
            Document(loc.record.key, loc.record.meta, loc.record.n_tokens,
                     loc.record.original_tokens or loc.record.n_tokens)
            for loc in self._index.docs.values()
        ]

    def documents(self) -> list[Document]:
        """Every committed document, in commit order."""
        return list(self._documents)

    def commit_records(self) -> list[CommitRecord]:
        """The committed units, in commit order."""
        return list(self._index.records)

    def document(self, key: str) -> Document:
        loc = self._locate(key)
        return Document(loc.record.key, loc.record.meta, loc.record.n_tokens,
                        loc.record.original_tokens or loc.record.n_tokens)

    @property
    def n_documents(self) -> int:
        return len(self._index.docs)

    @property
    def n_tokens(self) -> int:
        return sum(loc.record.n_tokens for loc in self._index.docs.values())

    # -- values -----------------------------------------------------------------------------------------------
    def token_ids(self, key: str) -> np.ndarray:
        loc = self._locate(key)
        return np.asarray(self._array(loc.segment, TOKEN_IDS)[loc.start:loc.stop])

    def activations(self, hook: str, layer: int, key: str, span: tuple[int, int] | None = None) -> np.ndarray:
        """[n_tokens, width] float32 (bf16 and fp16 caches widen exactly); `span` picks token positions [a, b)."""
        return widen_to_float32(self._stored(hook, layer, key, span), self.dtype)

    def tensor(self, hook: str, layer: int, key: str, span: tuple[int, int] | None = None) -> torch.Tensor:
        """The same rows as a torch tensor in the cache's own dtype (e.g. torch.bfloat16, bit-exact)."""
        return to_torch(self._stored(hook, layer, key, span), self.dtype)

    def iter_activations(self, hook: str, layer: int, keys: Iterable[str] | None = None, *,
                         block_bytes: int = STREAM_BLOCK_BYTES) -> Iterator[tuple[Document, np.ndarray]]:
        """Yield (document, float32 rows) for every wanted document, reading each chunk at most once.

        Memory stays near `block_bytes` plus the longest document, whatever the cache size.
        """
        self._check_hook_layer(hook, layer)
        wanted = None if keys is None else set(keys)
        if wanted is not None:
            unknown = wanted - self._index.docs.keys()
            if unknown:
                raise KeyError(f"{len(unknown)} document key(s) not in {self.path}, e.g. {sorted(unknown)[0]}")
        by_segment: dict[str, list[DocLocation]] = {}
        for loc in self._index.docs.values():
            if wanted is None or loc.record.key in wanted:
                by_segment.setdefault(loc.segment, []).append(loc)
        for segment, locs in by_segment.items():
            yield from self._stream_segment(self._array(segment, activation_name(hook, layer)), locs, block_bytes)

    def _stream_segment(self, array: zarr.Array, locs: list[DocLocation],
                        block_bytes: int) -> Iterator[tuple[Document, np.ndarray]]:
        chunk_rows = int(array.chunks[0])
        row_bytes = array.shape[1] * array.dtype.itemsize
        block_rows = max(chunk_rows, (block_bytes // row_bytes) // chunk_rows * chunk_rows)
        block_start = block_end = 0
        block = np.empty((0, array.shape[1]), array.dtype)
        for loc in sorted(locs, key=lambda item: item.start):
            if loc.stop > block_end:
                # extend the window to cover this document; rows already read are kept, never read twice
                first = loc.start // chunk_rows * chunk_rows
                if first >= block_end:
                    tail, read_from = block[:0], first
                else:
                    first = max(first, block_start)
                    tail, read_from = block[first - block_start:], block_end
                block_end = min(array.shape[0], max(loc.stop, read_from + block_rows))
                block = np.concatenate([tail, np.asarray(array[read_from:block_end])])
                block_start = first
            rows = block[loc.start - block_start:loc.stop - block_start]
            yield self.document(loc.record.key), widen_to_float32(rows, self.dtype)

    # -- summary ----------------------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Fingerprint summary, contents, bytes on disk and the compression ratio of the activation arrays."""
        from .stats import disk_usage

        itemsize = storage_dtype(self.dtype).itemsize
        widths = sum(self.fingerprint.widths[h] for h in self.hooks) * len(self.layers)
        stored_tokens = sum(sum(d.n_tokens for d in r.documents) for r in self._index.records)
        raw = stored_tokens * widths * itemsize
        usage = disk_usage(self.path)
        model = self.fingerprint.model
        return {
            "path": str(self.path),
            "model": {k: model.get(k) for k in ("name", "architecture", "source") if k in model},
            "model_digest": self.fingerprint.digest[:16],
            "dtype": self.dtype,
            "hooks": list(self.hooks),
            "layers": list(self.layers),
            "widths": dict(self.fingerprint.widths),
            "max_length": self.fingerprint.capture.max_length,
            "documents": self.n_documents,
            "tokens": self.n_tokens,
            "units": len(self._index.records),
            "truncated_documents": sum(1 for loc in self._index.docs.values() if loc.record.truncated),
            "bytes_on_disk": usage.total,
            "activation_bytes_raw": raw,
            "activation_bytes_stored": usage.activations,
            "compression_ratio": raw / usage.activations if usage.activations else None,
            "uncommitted_segments": usage.segments - len({r.segment for r in self._index.records}),
        }

    # -- internals ----------------------------------------------------------------------------------------------
    def _check_hook_layer(self, hook: str, layer: int | None) -> None:
        if hook not in self.hooks:
            raise CacheError(f"hook {hook!r} is not in {self.path}: it holds {', '.join(self.hooks)}")
        if layer is not None and layer not in self.layers:
            raise CacheError(f"layer {layer} is not in {self.path}: it holds layers {list(self.layers)}")

    def _locate(self, key: str) -> DocLocation:
        try:
            return self._index.docs[key]
        except KeyError:
            raise KeyError(f"document {key!r} is not committed in {self.path}") from None

    def _array(self, segment: str, name: str) -> zarr.Array:
        cached = self._arrays.get((segment, name))
        if cached is None:
            cached = zarr.open_array(self._group.store, path=f"{segment_path(segment)}/{name}", mode="r")
            self._arrays[(segment, name)] = cached
        return cached

    def _stored(self, hook: str, layer: int, key: str, span: tuple[int, int] | None) -> np.ndarray:
        self._check_hook_layer(hook, layer)
        loc = self._locate(key)
        start, stop = loc.start, loc.stop
        if span is not None:
            a, b = span
            if not 0 <= a < b <= loc.record.n_tokens:
                raise ValueError(f"span {span} is outside document {key} of {loc.record.n_tokens} tokens")
            start, stop = loc.start + a, loc.start + b
        return np.asarray(self._array(loc.segment, activation_name(hook, layer))[start:stop])
