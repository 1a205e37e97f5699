"""Snapshots: commit records folded into manifests, so that opening a cache costs a bounded number of requests.

Every commit is its own record (`commits/<unit>.json`, published once). Reading ten thousand of them one by one is
seconds on a disk and hours of GETs on S3, so writers (every `FOLD_EVERY` commits, and at the end of a build) and
`actcache compact` fold them into `snapshots/<sequence>.json`: every commit record at that moment and the newest
annotation version. A reader loads the newest manifest, lists the commit names (one request per 1,000) and reads
only the records the manifest lacks. A tag (`tags/<name>.json`) names a manifest and its annotation version: a
reader of the tag sees exactly that state, whatever was appended or relabelled since. docs/FORMAT.md is the spec.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from .annotations import AnnotationLog
from .backends.backend import StorageBackend
from .commit_log import CommitLog
from .errors import CacheError, CorruptCacheError
from .index import CommitIndex, CommitRecord
from .layout import COMMITS, FORMAT_VERSION, SNAPSHOTS, TAGS, commit_name, snapshot_name

__all__ = ["FOLD_EVERY", "Snapshot", "SnapshotLog", "Tag"]

FOLD_EVERY = 64  # a writer folds after this many of its own commits: a reader then reads at most ~64 records each
KEEP_UNTAGGED = 2  # untagged manifests kept by `compact`: the newest and the one before (a reader may be reading it)
_TAG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_READ_ATTEMPTS = 5  # a manifest deleted between listing and reading it: list again


@dataclass(frozen=True)
class Snapshot:
    """A consistent state of a cache: its commit records, the manifest they came from (0: none) and the annotation
    version its labels are read at (None: the newest when the reader opened)."""

    records: tuple[CommitRecord, ...]
    sequence: int
    annotation_version: int | None
    unfolded: int  # records read one by one because the manifest lacked them

    @property
    def index(self) -> CommitIndex:
        return CommitIndex.of(self.records)


@dataclass(frozen=True)
class Tag:
    name: str
    snapshot: int
    annotation_version: int
    created: float

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "name": self.name, "snapshot": self.snapshot,
                "annotation_version": self.annotation_version, "created": self.created}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tag:
        return cls(str(data["name"]), int(data["snapshot"]), int(data["annotation_version"]), float(data["created"]))


class SnapshotLog:
    """The manifests and tags of one cache."""

    def __init__(self, backend: StorageBackend) -> None:
        self.backend = backend
        self._commits = CommitLog(backend, COMMITS)
        self._manifests = CommitLog(backend, SNAPSHOTS)
        self._tags = CommitLog(backend, TAGS)

    def sequences(self) -> list[int]:
        return sorted(int(name.removesuffix(".json")) for name in self._manifests.names())

    def current(self) -> Snapshot:
        """The newest manifest plus every commit record it lacks."""
        for _ in range(_READ_ATTEMPTS):
            sequences = self.sequences()
            try:
                folded = self._read_manifest(sequences[-1]) if sequences else {}
            except FileNotFoundError:  # pruned by `compact` after our listing: the newer one exists
                continue
            names = self._commits.names()
            extra = {name: CommitRecord.from_dict(self._commits.get(name)) for name in names if name not in folded}
            records = tuple(folded[name] for name in names if name in folded) + tuple(extra.values())
            return Snapshot(records, sequences[-1] if sequences else 0, None, len(extra))
        raise CacheError(f"{self.backend.url}: snapshot manifests kept being replaced while reading: retry")

    def tagged(self, name: str) -> Snapshot:
        """Exactly the state tag `name` pinned."""
        tag = self.tag_info(name)
        folded = self._read_manifest(tag.snapshot)
        return Snapshot(tuple(folded.values()), tag.snapshot, tag.annotation_version, 0)

    def fold(self) -> Snapshot:
        """Publish a manifest of the current state when commits are missing from the newest one; the state."""
        state = self.current()
        if state.unfolded == 0 and state.sequence:
            return state
        annotation = max(AnnotationLog(self.backend).versions(), default=0)
        sequence = state.sequence + 1
        while True:
            manifest = {"format_version": FORMAT_VERSION, "sequence": sequence, "created": time.time(),
                        "annotation_version": annotation,
                        "commits": {commit_name(r.unit_id): r.to_dict() for r in state.records}}
            if self._manifests.put_if_absent(snapshot_name(sequence), manifest):
                return Snapshot(state.records, sequence, None, 0)
            sequence += 1  # another writer folded at the same time: ours is the next one

    def tag(self, name: str) -> Tag:
        """Pin the current state (folded first) under `name`; a name is given once (refused when it exists)."""
        if not _TAG_NAME.match(name):
            raise CacheError(f"tag {name!r}: use letters, digits, `_`, `.` and `-` (up to 128, not starting with a "
                             "symbol)")
        state = self.fold()
        annotation = max(AnnotationLog(self.backend).versions(), default=0)  # the labels as of now
        tag = Tag(name, state.sequence, annotation, time.time())
        if not self._tags.put_if_absent(f"{name}.json", tag.to_dict()):
            existing = self.tag_info(name)
            raise CacheError(f"tag {name!r} already exists (snapshot {existing.snapshot}, "
                             f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(existing.created))} UTC): a tag never "
                             "moves; choose another name")
        return tag

    def tags(self) -> list[Tag]:
        return [Tag.from_dict(self._tags.get(name)) for name in self._tags.names()]

    def tag_info(self, name: str) -> Tag:
        try:
            return Tag.from_dict(self._tags.get(f"{name}.json"))
        except FileNotFoundError:
            known = ", ".join(t.name for t in self.tags()) or "none"
            raise CacheError(f"{self.backend.url} has no tag {name!r} (tags: {known}): `actcache tag CACHE NAME` "
                             "makes one") from None

    def prune(self) -> list[int]:
        """Delete manifests that no tag names, but the newest `KEEP_UNTAGGED`; the sequences deleted."""
        pinned = {t.snapshot for t in self.tags()}
        old = [s for s in self.sequences()[:-KEEP_UNTAGGED] if s not in pinned]
        for sequence in old:
            self._manifests.delete(snapshot_name(sequence))
        return old

    def _read_manifest(self, sequence: int) -> dict[str, CommitRecord]:
        data = self._manifests.get(snapshot_name(sequence))
        try:
            return {name: CommitRecord.from_dict(record) for name, record in data["commits"].items()}
        except (KeyError, TypeError, ValueError) as error:
            raise CorruptCacheError(f"{SNAPSHOTS}/{snapshot_name(sequence)} is not a valid manifest ({error!r}): "
                                    "delete it and run `actcache compact` (the commit records are intact)") from None
