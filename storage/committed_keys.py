"""The document keys committed to a cache, followed while other writers commit.

A writer that shares a cache polls this between claims. The first `refresh` reads the newest snapshot manifest and
the records after it; later ones list the commit journal's tail since the previous poll (storage/commit_journal.py;
every commit name when the cache has no journal yet) and read only the records not seen yet, so a poll costs one
listing request plus one read per new record, however many units the cache holds.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from .backends.backend import StorageBackend
from .commit_journal import recent_units
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
        self._since: float | None = None  # every record that existed then was read (None: list every commit)
        self.keys: set[str] = set()

    def refresh(self) -> set[str]:
        """Read what was committed since the last call; return every committed key (the same set, grown)."""
        began = time.time()
        if self._seen is None:
            snapshot = SnapshotLog(self._backend).current()
            self._seen = {commit_name(r.unit_id) for r in snapshot.records}
            self.keys.update(snapshot.columns.keys)  # no record per document built
            self._since = snapshot.listed_at if snapshot.journaled else None
            return self.keys
        if self._since is None:
            names = self._log.names()
        else:
            names = [commit_name(unit) for unit in recent_units(self._backend, self._since)]
            self._since = began
        for name in names:
            if name not in self._seen:
                try:
                    self._add([CommitRecord.from_dict(self._log.get(name))])
                except FileNotFoundError:  # a marker whose writer died before the record
                    continue
                self._seen.add(name)
        return self.keys

    def _add(self, records: Iterable[CommitRecord]) -> None:
        self.keys.update(doc.key for record in records for doc in record.documents)
