"""Pooling: one vector per document from its token rows, chosen by a short string (`last`, `mean`, ...).

The rule lives here, at the bottom of the import graph, so that `CacheReader.pooled` and every solver pool the
same way: the solvers import it (`actcache.solvers.pooling`), the storage layer never imports them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .errors import InputError

if TYPE_CHECKING:
    from .reader import CacheReader, Document

__all__ = ["Pooling", "PoolingError", "PoolingKind", "Where", "parse_pooling", "pooled_matrix", "select_documents"]

PoolingKind = Literal["last", "mean", "mean-skip", "span"]
_SYNTAX = '"last", "mean", "mean-skip:K" or "span:A:B" (tokens A..B-1, 0-based)'
# a document filter: label field -> wanted value (or values), or a predicate on the document
Where = Mapping[str, Any] | Callable[["Document"], bool]


class PoolingError(InputError):
    """A pooling string that does not parse, or a document too short for its pooling."""


@dataclass(frozen=True)
class Pooling:
    """A pooling rule. `skip` is K of mean-skip; `start`/`stop` bound span (stop exclusive)."""

    kind: PoolingKind
    skip: int = 0
    start: int = 0
    stop: int = 0

    def __str__(self) -> str:
        if self.kind == "mean-skip":
            return f"mean-skip:{self.skip}"
        if self.kind == "span":
            return f"span:{self.start}:{self.stop}"
        return self.kind

    def min_tokens(self) -> int:
        """Fewest tokens a document needs for this pooling."""
        return {"last": 1, "mean": 1, "mean-skip": self.skip + 1, "span": self.stop}[self.kind]

    def token_slice(self, n_tokens: int, doc: str = "?") -> slice:
        """The token rows this pooling reads; a too-short document is an error naming it."""
        if n_tokens < self.min_tokens():
            raise PoolingError(
                f"document {doc} has {n_tokens} tokens but pooling {self} needs {self.min_tokens()}: "
                f"choose a shorter pooling (e.g. last or mean) or drop the document"
            )
        if self.kind == "last":
            return slice(n_tokens - 1, n_tokens)
        if self.kind == "mean":
            return slice(0, n_tokens)
        if self.kind == "mean-skip":
            return slice(self.skip, n_tokens)
        return slice(self.start, self.stop)

    def __call__(self, h: Any, doc: str = "?") -> Any:
        """Pool `h` (n_tok, d), a numpy array or a torch tensor, to (d,); means are taken in float32 or wider
        (numpy: accumulated in float64, returned as float32)."""
        shape = tuple(h.shape)
        if len(shape) != 2:
            raise PoolingError(f"document {doc}: expected a [n_tokens, width] matrix, got shape {shape}")
        rows = h[self.token_slice(shape[0], doc)]  # (n_sel, d)
        if self.kind == "last":
            return rows[0]
        if isinstance(rows, np.ndarray):
            return rows.mean(axis=0, dtype=np.float64).astype(np.float32)
        wide = rows if rows.element_size() >= 4 else rows.float()  # torch: half precision averaged in float32
        return wide.mean(dim=0)


def parse_pooling(text: str) -> Pooling:
    """Parse "last" | "mean" | "mean-skip:K" | "span:A:B" into a `Pooling`."""
    parts = text.strip().split(":")
    try:
        if parts == ["last"] or parts == ["mean"]:
            return Pooling(parts[0])  # type: ignore[arg-type]
        if parts[0] == "mean-skip" and len(parts) == 2:
            skip = int(parts[1])
            if skip < 0:
                raise ValueError
            return Pooling("mean-skip", skip=skip)
        if parts[0] == "span" and len(parts) == 3:
            start, stop = int(parts[1]), int(parts[2])
            if not 0 <= start < stop:
                raise ValueError
            return Pooling("span", start=start, stop=stop)
    except ValueError:
        pass
    raise PoolingError(f"bad pooling {text!r}: use {_SYNTAX} with 0 <= K and 0 <= A < B")


def _matches(value: Any, wanted: Any) -> bool:
    """Label equality that forgives a command line's strings: 3 matches "3". A list label (a text labelled twice,
    a document several service jobs sent) matches when any of its values does."""
    if isinstance(value, list):
        return any(_matches(item, wanted) for item in value)
    options = wanted if isinstance(wanted, (list, tuple, set, frozenset)) else (wanted,)
    return any(value == w or (value is not None and str(value) == str(w)) for w in options)


def select_documents(docs: Sequence[Document], where: Where | None) -> list[Document]:
    """The documents whose labels match `where` (every field equal to its value, or one of its values).

    A field no document has, or a value no document carries, is an error listing what is there: an empty
    selection is almost always a typo.
    """
    if where is None:
        return list(docs)
    if callable(where):
        return [d for d in docs if where(d)]
    chosen = list(docs)
    for name, wanted in where.items():
        present = [d.meta[name] for d in docs if name in d.meta]
        if not present:
            fields = sorted({k for d in docs for k in d.meta})
            raise PoolingError(f"no document has the label field {name!r}: the fields are {', '.join(fields)}")
        chosen = [d for d in chosen if name in d.meta and _matches(d.meta[name], wanted)]
        if not any(_matches(v, wanted) for v in present):
            values = sorted({str(v) for v in present})
            shown = ", ".join(values[:10]) + (", ..." if len(values) > 10 else "")
            raise PoolingError(f"no document has {name}={wanted!r}: its values are {shown}")
    return chosen


def pooled_matrix(reader: CacheReader, hook: str, layer: int, pooling: str | Pooling, where: Where | None = None,
                  project: np.ndarray | None = None) -> tuple[np.ndarray, list[str], list[dict[str, Any]]]:
    """(X [n_docs, width] float32, keys, metas) of the selected documents in `reader.documents()` order; with
    `project` (k, width), X @ project.T [n_docs, k] float64 instead (scores, without keeping X).

    Streams (hook, layer) chunk by chunk (each chunk read once), so memory is the result plus a block.
    """
    rule = parse_pooling(pooling) if isinstance(pooling, str) else pooling
    docs = select_documents(reader.documents(), where)
    for doc in docs:  # a short document fails before any chunk is read
        rule.token_slice(doc.n_tokens, f"{doc.meta.get('source', doc.key)} ({doc.key[:12]})")
    row_of = {doc.key: i for i, doc in enumerate(docs)}
    if project is None:
        x = np.empty((len(docs), reader.width(hook)), dtype=np.float32)  # (n_docs, d)
    else:
        x = np.empty((len(docs), len(project)), dtype=np.float64)  # (n_docs, k)
        basis = np.asarray(project, dtype=np.float64).T  # (d, k)
    if docs:
        for doc, rows in reader.iter_activations(hook, layer, list(row_of), check_finite=True):
            pooled = rule(rows, doc.key)  # (d,)
            x[row_of[doc.key]] = pooled if project is None else pooled.astype(np.float64) @ basis
    return x, [d.key for d in docs], [dict(d.meta) for d in docs]
