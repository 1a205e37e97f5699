"""Snapshots: commit records folded into manifests, so that opening a cache costs a bounded number of requests.

Every commit is its own record (`commits/<unit>.json`, published once). Reading ten thousand of them one by one is
seconds on a disk and hours of GETs on S3, so writers (every `FOLD_EVERY` commits, and at the end of a build) and
`actcache compact` fold them into `snapshots/<sequence>.safetensors`: every commit record at that moment (their
documents as columns, storage/snapshot_manifest.py), when the fold began listing them (`listed_at`) and the newest
annotation version; manifests of older versions, `snapshots/<sequence>.json` with the records inline, still read. A
reader loads the newest manifest, lists the journal's markers since its `listed_at` (storage/commit_journal.py: one
request, however many units the cache holds) and reads only the records the manifest lacks; a manifest without
`listed_at` (written before the journal) is completed from a listing of every commit name (one request per 1,000).
A tag (`tags/<name>.json`) names a manifest and its annotation version: a reader of the tag sees exactly that state,
whatever was appended or relabelled since. docs/FORMAT.md is the spec.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from .annotations import AnnotationLog
from .backends.backend import StorageBackend
from .commit_journal import prune_journal, recent_units
from .commit_log import CommitLog
from .document_columns import DocumentColumns
from .errors import CacheError
from .gc_pause import gc_paused
from .index import CommitIndex, CommitRecord
from .layout import COMMITS, FORMAT_VERSION, SNAPSHOTS, TAGS, commit_name, snapshot_name
from .snapshot_manifest import MANIFEST_SUFFIX, damaged_manifest, decode_manifest, encode_manifest, manifest_fields

__all__ = ["FOLD_EVERY", "Snapshot", "SnapshotLog", "Tag"]

FOLD_EVERY = 64  # a writer folds after this many of its own commits: a reader then reads at most ~64 records each
KEEP_UNTAGGED = 2  # untagged manifests kept by `compact`: the newest and the one before (a reader may be reading it)
_TAG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_READ_ATTEMPTS = 5  # a manifest deleted between listing and reading it: list again
_READ_THREADS = 16  # commit records read at once (each a small request, mostly waiting on the store)


@dataclass(frozen=True)
class Snapshot:
    """A consistent state of a cache: its commit records (their documents as columns, in the same order), the
    manifest they came from (0: none) and the annotation version its labels are read at (None: the newest when the
    reader opened)."""

    records: tuple[CommitRecord, ...]
    columns: DocumentColumns
    sequence: int
    annotation_version: int | None
    unfolded: int  # records read one by one because the manifest lacked them
    listed_at: float | None = None  # every record that existed at this time (this process's clock) is here
    journaled: bool = False  # the manifest has `listed_at`: the records after it came from the journal's tail

    @cached_property
    def index(self) -> CommitIndex:
        return CommitIndex.of(self.records, self.columns)


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
        return sorted(self._manifest_names())

    @gc_paused
    def current(self) -> Snapshot:
        """The newest manifest plus every commit record it lacks.

        A manifest with `listed_at` is completed from the journal's tail (listed while the manifest decodes); one
        without, or one `compact` may have pruned the journal behind (no longer among the newest `KEEP_UNTAGGED`),
        from a listing of every commit name, leaving out records whose file is gone. The records it lacks are read
        in parallel: on S3 each is a round trip.
        """
        with ThreadPoolExecutor(_READ_THREADS, thread_name_prefix="actcache-snapshot") as pool:
            for _ in range(_READ_ATTEMPTS):
                began = time.time()  # before any listing: every record that exists now ends up in the state
                names = self._manifest_names()
                sequence = max(names, default=0)
                try:
                    data, listed_at = self._fetch_manifest(names[sequence]) if names else (b"", None)
                except FileNotFoundError:  # pruned by `compact` after our listing: the newer one exists
                    continue
                if listed_at is not None:
                    tail = pool.submit(recent_units, self.backend, listed_at)
                    records, columns = self._decode_manifest(names[sequence], data)
                    units = tail.result()
                    if sequence in self.sequences()[-KEEP_UNTAGGED:]:  # so its journal tail was never pruned
                        folded = {r.unit_id for r in records}
                        extra = self._read_records([commit_name(u) for u in units if u not in folded], pool)
                        return _state(records, columns, list(range(len(records))), extra, sequence, began, True)
                    listing = pool.submit(self._commits.names)
                else:
                    listing = pool.submit(self._commits.names)
                    records, columns = (self._decode_manifest(names[sequence], data) if names
                                        else ([], DocumentColumns.of_records([])))
                listed = listing.result()
                present = set(listed)
                kept = [i for i, r in enumerate(records) if _record_name(r) in present]
                folded = {_record_name(records[i]) for i in kept}
                extra = self._read_records([name for name in listed if name not in folded], pool)
                return _state(records, columns, kept, extra, sequence, began, False)
        raise CacheError(f"{self.backend.url}: snapshot manifests kept being replaced while reading: retry")

    def tagged(self, name: str) -> Snapshot:
        """Exactly the state tag `name` pinned."""
        tag = self.tag_info(name)
        names = self._manifest_names()
        if tag.snapshot not in names:
            raise CacheError(f"tag {name!r} names snapshot {tag.snapshot}, which is gone from {SNAPSHOTS}/: restore "
                             "it from a backup (`compact` never deletes a tagged manifest)")
        manifest = names[tag.snapshot]
        records, columns = self._decode_manifest(manifest, self._fetch_manifest(manifest)[0])
        return Snapshot(tuple(records), columns, tag.snapshot, tag.annotation_version, 0)

    def fold(self) -> Snapshot:
        """Publish a manifest of the current state when commits are missing from the newest one (or it is of an older
        version); the state."""
        state = self.current()
        if state.unfolded == 0 and state.journaled:
            return state  # (a manifest of an older version, or without `listed_at`, is written again)
        annotation = max(AnnotationLog(self.backend).versions(), default=0)
        index = state.index  # written in commit order: a reader's index then needs no reordering
        sequence = state.sequence + 1
        while True:
            fields = {"format_version": FORMAT_VERSION, "sequence": sequence, "created": time.time(),
                      "listed_at": state.listed_at, "annotation_version": annotation}
            data = encode_manifest(fields, index.records, index.columns)
            if self.backend.put_if_absent(f"{SNAPSHOTS}/{_manifest_name(sequence)}", data):
                return Snapshot(tuple(index.records), index.columns, sequence, None, 0, state.listed_at, True)
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
            for name in (_manifest_name(sequence), snapshot_name(sequence)):  # either format (deleting none is fine)
                self._manifests.delete(name)
        return old

    def prune_journal(self) -> int:
        """Delete the journal markers that no reader can need any more: older than the kept manifests (the newest
        `KEEP_UNTAGGED`, the ones a reader may open from) by twice the margin; none while one of those lacks
        `listed_at`. The number deleted."""
        names = self._manifest_names()
        try:
            listed = [self._fetch_manifest(names[s])[1] for s in sorted(names)[-KEEP_UNTAGGED:]]
        except FileNotFoundError:  # another `compact` pruned meanwhile: leave the journal to the next one
            return 0
        if not listed or None in listed:
            return 0
        return len(prune_journal(self.backend, min(t for t in listed if t is not None)))

    def _manifest_names(self) -> dict[int, str]:
        """Sequence -> the name of its manifest in `snapshots/` (the columnar one where both exist)."""
        found: dict[int, str] = {}
        for name in self._manifests.names_with_suffix((".json", MANIFEST_SUFFIX)):
            stem = name.rpartition(".")[0]
            if stem.isdigit() and (name.endswith(MANIFEST_SUFFIX) or int(stem) not in found):
                found[int(stem)] = name
        return found

    def _fetch_manifest(self, name: str) -> tuple[bytes, float | None]:
        """Manifest `name`'s bytes and its `listed_at` (None: written before the journal); FileNotFoundError when it
        is gone."""
        data = self.backend.get(f"{SNAPSHOTS}/{name}")
        if not name.endswith(MANIFEST_SUFFIX):
            return data, None
        listed_at = manifest_fields(data, f"{SNAPSHOTS}/{name}").get("listed_at")
        return data, None if listed_at is None else float(listed_at)

    def _decode_manifest(self, name: str, data: bytes) -> tuple[list[CommitRecord], DocumentColumns]:
        """The records of manifest `name` (`data`: its bytes) and their documents as columns."""
        where = f"{SNAPSHOTS}/{name}"
        if name.endswith(MANIFEST_SUFFIX):
            _, records, columns = decode_manifest(data, where)
            return records, columns
        try:  # a manifest of an older version: the records inline, as in commits/
            records = [CommitRecord.from_dict(record) for record in json.loads(data)["commits"].values()]
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise damaged_manifest(where, error) from None
        return records, DocumentColumns.of_records(records)

    def _read_records(self, names: list[str], pool: ThreadPoolExecutor) -> list[CommitRecord]:
        """The commit records `names`, read in parallel; a name without a record (a journal marker whose writer
        died before publishing it) is left out."""
        def read(name: str) -> CommitRecord | None:
            try:
                return CommitRecord.from_dict(self._commits.get(name))
            except FileNotFoundError:
                return None

        return [record for record in pool.map(read, names) if record is not None]


def _state(records: list[CommitRecord], columns: DocumentColumns, kept: list[int], extra: list[CommitRecord],
           sequence: int, listed_at: float, journaled: bool) -> Snapshot:
    """The manifest's records `kept` (by position) followed by `extra`, with their documents as columns."""
    folded = columns if len(kept) == len(records) else columns.take_units(np.asarray(kept, dtype=np.int64))
    all_columns = DocumentColumns.concat([folded, DocumentColumns.of_records(extra)])
    return Snapshot((*(records[i] for i in kept), *extra), all_columns, sequence, None, len(extra), listed_at,
                    journaled)


def _manifest_name(sequence: int) -> str:
    return snapshot_name(sequence).removesuffix(".json") + MANIFEST_SUFFIX


def _record_name(record: CommitRecord) -> str:
    return commit_name(record.unit_id)
