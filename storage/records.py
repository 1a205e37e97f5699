"""Plain metadata records of the format: documents, arrays, commits."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

__all__ = ["DocRecord", "ArraySpec", "ArrayManifest"]

_NO_LABELS: dict[str, Any] = MappingProxyType({})  # type: ignore[assignment]  # a shared default nobody can change


class DocRecord(NamedTuple):
    """One stored document: its content key, its real token count, its labels, and its length before truncation.

    A tuple, not a dataclass: a cache of a million documents builds a million of these when it is opened.
    """

    key: str
    n_tokens: int
    meta: dict[str, Any] = _NO_LABELS
    original_tokens: int | None = None

    @property
    def truncated(self) -> bool:
        return self.original_tokens is not None and self.original_tokens > self.n_tokens

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "n_tokens": self.n_tokens, "meta": dict(self.meta)}
        if self.original_tokens is not None:
            out["original_tokens"] = self.original_tokens
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DocRecord:
        return cls(data["key"], int(data["n_tokens"]), data.get("meta", {}), data.get("original_tokens"))


@dataclass(frozen=True)
class ArraySpec:
    """One activation array of a segment: (hook, layer), row width and the name of its feature dimension."""

    hook: str
    layer: int
    width: int
    feature_dim: str = "feature"
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ArrayManifest:
    """What a writer put in one array: checked by the commit and by `verify`; `error`: a lossy array's measured
    error against the exact values (storage/lossy.py `summarize`), None for exact arrays; `bytes`: the stored size
    of its chunks (so `actcache ls` sizes a cache from manifests alone), None in records written before it."""

    name: str
    shape: tuple[int, ...]
    chunk_rows: int
    n_chunks: int
    error: dict[str, Any] | None = None
    bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"shape": list(self.shape), "chunk_rows": self.chunk_rows, "n_chunks": self.n_chunks}
        if self.error is not None:
            out["error"] = self.error
        if self.bytes is not None:
            out["bytes"] = self.bytes
        return out

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> ArrayManifest:
        stored = data.get("bytes")
        return cls(name=name, shape=tuple(data["shape"]), chunk_rows=int(data["chunk_rows"]),
                   n_chunks=int(data["n_chunks"]), error=data.get("error"),
                   bytes=None if stored is None else int(stored))
