"""The documents of many commit records as columns, so that opening a large cache builds no object per document.

A cache of 10,000 units holds ~100,000 documents; building a record, a location and a metadata dict for each of
them when a cache is opened costs seconds. Here they are a few arrays (token counts, unit boundaries) and two
lists (keys, metadata decoded on first use), and a document's `DocRecord` is built only when someone asks for it.
The snapshot manifest (storage/snapshot_manifest.py) stores exactly these columns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from .records import DocRecord

if TYPE_CHECKING:
    from .index import CommitRecord

__all__ = ["DocumentColumns", "UnitDocuments"]

NOT_RECORDED = -1  # `original_tokens` of a document whose record does not give it


class DocumentColumns:
    """Documents of a run of commit records, in record order: the documents of record u are rows
    `unit_offsets[u]:unit_offsets[u + 1]`."""

    def __init__(self, unit_offsets: np.ndarray, keys: list[str], n_tokens: np.ndarray,
                 original_tokens: np.ndarray, metas: list[dict[str, Any]] | Callable[[], list[dict[str, Any]]]) -> None:
        self.unit_offsets = unit_offsets  # int64 [units + 1]
        self.keys = keys
        self.n_tokens = n_tokens  # int64 [documents]
        self.original_tokens = original_tokens  # int64 [documents], NOT_RECORDED where absent
        self._metas = metas  # or the function that decodes them

    @classmethod
    def of_records(cls, records: Sequence[CommitRecord]) -> DocumentColumns:
        """The columns of records read one by one (old manifests, records not folded yet)."""
        docs = [doc for record in records for doc in record.documents]
        counts = [len(record.documents) for record in records]
        return cls(np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64),
                   [d.key for d in docs], np.array([d.n_tokens for d in docs], dtype=np.int64),
                   np.array([NOT_RECORDED if d.original_tokens is None else d.original_tokens for d in docs],
                            dtype=np.int64), [d.meta for d in docs])

    @classmethod
    def concat(cls, parts: Sequence[DocumentColumns]) -> DocumentColumns:
        """The units of every part, in order (metadata still decoded only when asked)."""
        parts = [p for p in parts if p.n_units] or list(parts[:1])
        if len(parts) == 1:
            return parts[0]
        starts = np.cumsum([0] + [len(p) for p in parts[:-1]])
        offsets = np.concatenate([[0]] + [p.unit_offsets[1:] + s for p, s in zip(parts, starts, strict=True)])
        return cls(offsets.astype(np.int64), [k for p in parts for k in p.keys],
                   np.concatenate([p.n_tokens for p in parts]), np.concatenate([p.original_tokens for p in parts]),
                   lambda: [m for p in parts for m in p.metas])

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (a spawned DataLoader worker or a Ray task gets the records): metadata decoded first."""
        return {**self.__dict__, "_metas": self.metas}

    @property
    def n_units(self) -> int:
        return len(self.unit_offsets) - 1

    @property
    def metas(self) -> list[dict[str, Any]]:
        """Each document's metadata as its commit record gave it (decoded on first use)."""
        if callable(self._metas):
            self._metas = self._metas()
        return self._metas

    def rows_of_units(self, units: np.ndarray) -> np.ndarray:
        """Rows of these units' documents, unit after unit."""
        starts, stops = self.unit_offsets[units], self.unit_offsets[units + 1]
        counts = stops - starts
        if not len(counts):
            return np.zeros(0, dtype=np.int64)
        return np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))

    def take_units(self, units: np.ndarray) -> DocumentColumns:
        """These units (indices into this run), in the order given."""
        if np.array_equal(units, np.arange(self.n_units)):
            return self
        rows = self.rows_of_units(units)
        counts = self.unit_offsets[units + 1] - self.unit_offsets[units]
        keys = self.keys
        return DocumentColumns(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                               [keys[i] for i in rows.tolist()], self.n_tokens[rows], self.original_tokens[rows],
                               lambda: [self.metas[i] for i in rows.tolist()])

    def doc_record(self, row: int) -> DocRecord:
        original = int(self.original_tokens[row])
        return DocRecord(self.keys[row], int(self.n_tokens[row]), self.metas[row],
                         None if original == NOT_RECORDED else original)

    def unit_documents(self) -> list[UnitDocuments]:
        """Each unit's documents (`CommitRecord.documents` of a manifest's records)."""
        bounds = self.unit_offsets.tolist()
        return [UnitDocuments(self, start, stop) for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]


class UnitDocuments(Sequence[DocRecord]):
    """The documents of one commit record, as `DocRecord`s built when read (`CommitRecord.documents`)."""

    def __init__(self, columns: DocumentColumns, start: int, stop: int) -> None:
        self._columns, self._start, self._stop = columns, start, stop

    def __len__(self) -> int:
        return self._stop - self._start

    @overload
    def __getitem__(self, index: int) -> DocRecord: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[DocRecord]: ...

    def __getitem__(self, index: int | slice) -> DocRecord | Sequence[DocRecord]:
        if isinstance(index, slice):
            return tuple(self)[index]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return self._columns.doc_record(self._start + index % len(self))

    def __iter__(self) -> Iterator[DocRecord]:
        return (self._columns.doc_record(row) for row in range(self._start, self._stop))

    def __eq__(self, other: object) -> bool:  # equal to the tuple of the same records (a record read from JSON)
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as the tuple of its records (not the whole snapshot's columns it points into)."""
        return tuple, (tuple(self),)

    def __repr__(self) -> str:
        return f"UnitDocuments({list(self)!r})"
