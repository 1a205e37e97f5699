"""The committed view of a cache, rebuilt from its commit records: which documents exist and where."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .records import ArrayManifest, DocRecord

__all__ = ["DocLocation", "CommitRecord", "CommitIndex"]


@dataclass(frozen=True)
class CommitRecord:
    unit_id: str
    segment: str
    fingerprint: str
    documents: tuple[DocRecord, ...]
    arrays: dict[str, ArrayManifest]
    created: float

    def to_dict(self) -> dict[str, Any]:
        from .layout import FORMAT_VERSION

        return {
            "format_version": FORMAT_VERSION,
            "unit_id": self.unit_id,
            "segment": self.segment,
            "fingerprint": self.fingerprint,
            "created": self.created,
            "n_tokens": sum(d.n_tokens for d in self.documents),
            "documents": [d.to_dict() for d in self.documents],
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


@dataclass
class CommitIndex:
    """Documents in commit order; a key committed twice (two users appending at once) counts once, first wins."""

    records: list[CommitRecord] = field(default_factory=list)
    docs: dict[str, DocLocation] = field(default_factory=dict)

    @classmethod
    def of(cls, records: Iterable[CommitRecord]) -> CommitIndex:
        """The index of these records, in commit order (time, then unit id: the same order for every reader)."""
        index = cls()
        for record in sorted(records, key=lambda r: (r.created, r.unit_id)):
            index.add(record)
        return index

    def add(self, record: CommitRecord) -> None:
        self.records.append(record)
        start = 0
        for i, doc in enumerate(record.documents):
            self.docs.setdefault(doc.key, DocLocation(doc, record.segment, i, start))
            start += doc.n_tokens

    @property
    def units(self) -> set[str]:
        return {r.unit_id for r in self.records}
