"""The document keys committed to a cache, followed while other writers commit.

A writer that shares a cache polls this between claims. The first `refresh` reads the newest snapshot manifest and
the records after it; later ones list the commit records and read only those not seen yet, so a poll costs one
listing plus one read per new record, however many units the cache holds.
"""

from __future__ import annotations

from collections.abc import Iterable

from .backends.backend import StorageBackend
from .commit_log import CommitLog
from .index import CommitRecord
from .layout import COMMITS, commit_name
from .snapshots import SnapshotLog

__all__ = ["CommittedKeys"]


class CommittedKeys:
    """Keys of every document committed to the cache on `backend`, as of the last `refresh`."""

    def __init__(self, backend: StorageBackend) -> None:
        self._backend = backend
        self._log = CommitLog(backend, COMMITS)
        self._seen: set[str] | None = None  # names of the commit records read
        self.keys: set[str] = set()

    def refresh(self) -> set[str]:
        """Read what was committed since the last call; return every committed key (the same set, grown)."""
        if self._seen is None:
            records = SnapshotLog(self._backend).current().records
            self._seen = {commit_name(r.unit_id) for r in records}
            self._add(records)
        for name in self._log.names():
            if name not in self._seen:
                self._add([CommitRecord.from_dict(self._log.get(name))])
                self._seen.add(name)
        return self.keys

    def _add(self, records: Iterable[CommitRecord]) -> None:
        self.keys.update(doc.key for record in records for doc in record.documents)
