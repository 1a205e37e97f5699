"""The committed view of a cache, rebuilt from its commit records: which documents exist and where."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np

from .document_columns import DocumentColumns
from .records import ArrayManifest, DocRecord

__all__ = ["DocLocation", "CommitRecord", "CommitIndex"]


@dataclass(frozen=True)
class CommitRecord:
    unit_id: str
    segment: str
    fingerprint: str
    documents: Sequence[DocRecord]  # a tuple, or the rows of a snapshot's columns (built when read)
    arrays: Mapping[str, ArrayManifest]  # a dict, or a manifest's (decoded when read)
    created: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.unit_dict(), "n_tokens": sum(d.n_tokens for d in self.documents),
                "documents": [d.to_dict() for d in self.documents]}

    def unit_dict(self) -> dict[str, Any]:
        """The record without its documents (a snapshot manifest keeps those as columns)."""
        from .layout import FORMAT_VERSION

        return {
            "format_version": FORMAT_VERSION,
            "unit_id": self.unit_id,
            "segment": self.segment,
            "fingerprint": self.fingerprint,
            "created": self.created,
            "arrays": {name: m.to_dict() for name, m in self.arrays.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CommitRecord:
        return cls(
            unit_id=data["unit_id"],
            segment=data["segment"],
            fingerprint=data["fingerprint"],
            documents=tuple(DocRecord.from_dict(d) for d in data["documents"]),
            arrays={name: ArrayManifest.from_dict(name, m) for name, m in data["arrays"].items()},
            created=float(data["created"]),
        )


class DocLocation(NamedTuple):
    """Where a document's rows are: its segment, its position there, and its first row."""

    record: DocRecord
    segment: str
    position: int  # the document's place among its segment's documents
    start: int

    @property
    def stop(self) -> int:
        return self.start + self.record.n_tokens


class CommitIndex:
    """Documents in commit order; a key committed twice (two users appending at once) counts once, first wins.

    Held as columns (storage/document_columns.py): a document's `DocLocation` is built when it is looked up.
    """

    def __init__(self, records: Sequence[CommitRecord], columns: DocumentColumns) -> None:
        """`records` in commit order, `columns` their documents in the same order."""
        self.records = list(records)
        self.columns = columns
        keys = columns.keys
        rows = dict(zip(keys, range(len(keys)), strict=True))
        if len(rows) < len(keys):  # a key committed twice: the first commit wins, and keeps its place
            rows = {}
            for row, key in enumerate(keys):
                rows.setdefault(key, row)
        self._rows = rows  # key -> row of its first commit, in commit order
        self.docs: Mapping[str, DocLocation] = _Locations(self)

    @classmethod
    def of(cls, records: Iterable[CommitRecord], columns: DocumentColumns | None = None) -> CommitIndex:
        """The index of these records, in commit order (time, then unit id: the same order for every reader);
        `columns`: their documents in the order given, when already at hand."""
        records = list(records)
        columns = DocumentColumns.of_records(records) if columns is None else columns
        order = sorted(range(len(records)), key=lambda i: (records[i].created, records[i].unit_id))
        return cls([records[i] for i in order], columns.take_units(np.asarray(order, dtype=np.int64)))

    @property
    def units(self) -> set[str]:
        return {r.unit_id for r in self.records}

    @property
    def n_documents(self) -> int:
        return len(self._rows)

    @property
    def n_tokens(self) -> int:
        return int(self.columns.n_tokens[self.rows].sum())

    def keys(self) -> list[str]:
        """Every document key, in commit order."""
        return list(self._rows)

    @cached_property
    def rows(self) -> np.ndarray:
        """The column row of every document, in commit order."""
        return np.fromiter(self._rows.values(), dtype=np.int64, count=len(self._rows))

    def row(self, key: str) -> int:
        """KeyError when `key` is not committed."""
        return self._rows[key]

    def location(self, row: int) -> DocLocation:
        unit = int(self._unit_of_row[row])
        return DocLocation(self.columns.doc_record(row), self.records[unit].segment,
                           row - int(self.columns.unit_offsets[unit]), int(self._start_of_row[row]))

    @cached_property
    def _unit_of_row(self) -> np.ndarray:
        return np.repeat(np.arange(self.columns.n_units), np.diff(self.columns.unit_offsets))

    @cached_property
    def _start_of_row(self) -> np.ndarray:
        """Each document's first row in its segment: the tokens of the documents before it in its unit."""
        before = np.cumsum(self.columns.n_tokens) - self.columns.n_tokens  # tokens before the row, all units
        first = np.concatenate([before, [0]])[self.columns.unit_offsets[:-1]]  # tokens before each unit
        return before - first[self._unit_of_row]


class _Locations(Mapping[str, DocLocation]):
    """`CommitIndex.docs`: key -> DocLocation, in commit order, each built when read."""

    def __init__(self, index: CommitIndex) -> None:
        self._index = index

    def __getitem__(self, key: str) -> DocLocation:
        return self._index.location(self._index.row(key))

    def __contains__(self, key: object) -> bool:
        return key in self._index._rows

    def __iter__(self) -> Iterator[str]:
        return iter(self._index._rows)

    def __len__(self) -> int:
        return len(self._index._rows)
