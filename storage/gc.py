"""Collect the garbage of crashed writers: uncommitted segments whose writer is gone, their expired claims (on
segments and on document buckets), and stale temp files.

A writer claims each segment before creating it and renews the claim while it lives (storage/claims.py), so a
segment is removed only when its claim has expired (or, for a segment with no claim, e.g. one written by an older
actcache, when it is older than `older_than_s`). Committed data is never touched: the commit record is looked up
again after the claim, so a unit that was committed while gc ran is kept. Expired claims are removed with the
claim board's compare-and-swap tombstone (`ClaimBoard.break_expired`), so a claim that a writer renewed or took over
while gc ran stays. The same on a disk and on S3.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .atomic_dir import TEMP_MARK
from .backends.backend import ObjectInfo, StorageBackend
from .backends.backend_url import open_backend
from .backends.local import LocalBackend
from .claims import LEASE_SECONDS, ClaimBoard, document_subject, segment_subject
from .commit_log import CommitLog
from .layout import CLAIMS, COMMITS, SEGMENTS, commit_name, segment_path
from .root import GROUP_METADATA, open_root
from .snapshots import SnapshotLog

__all__ = ["GarbageReport", "collect_garbage"]

DOCUMENT_CLAIMS = document_subject("")  # 'document/': the prefix of every document bucket's subject
ZARR_TEMP_SUFFIX = ".partial"  # zarr's LocalStore writes `<key>.<uuid>.partial`, then renames it into place


@dataclass
class GarbageReport:
    """What gc removed (or would remove, in a dry run) and what it kept, with the reason for each kept segment."""

    segments: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)  # paths relative to the cache
    claims: list[str] = field(default_factory=list)  # expired claims on segments that no longer exist
    document_claims: list[str] = field(default_factory=list)  # expired claims on document buckets
    kept: dict[str, str] = field(default_factory=dict)  # uncommitted segment -> why it was kept


def collect_garbage(location: str | os.PathLike[str], older_than_s: float = 3600.0, dry_run: bool = False,
                    temp_age_s: float = LEASE_SECONDS) -> GarbageReport:
    """Remove uncommitted segments whose writer is gone, and temp files older than `temp_age_s`.

    A segment whose claim is live is kept (its writer renews it); one whose claim expired is removed at once; one
    with no claim falls back to its age (`older_than_s` since its last change). Expired claims on segments never
    created and on document buckets go too (a live writer takes the latter over anyway; gc keeps `claims/` from
    growing). A temp file lives for milliseconds, so one older than a lease was left by a killed process.
    """
    backend = open_backend(location)
    open_root(backend)  # refuse anything that is not a cache
    log = CommitLog(backend, COMMITS)
    committed = {r.segment for r in SnapshotLog(backend).current().records}
    board = ClaimBoard(CommitLog(backend, CLAIMS))
    report = GarbageReport()
    now = time.time()
    for segment_id, objects in sorted(_segments(backend).items()):
        if segment_id in committed:
            continue
        reason = _keep_reason(segment_id, objects, board, older_than_s, now, dry_run)
        if reason is None and _committed_now(backend, log, segment_id):
            reason = "committed while gc ran"
        if reason is not None:
            report.kept[segment_id] = reason
            continue
        report.segments.append(segment_id)
        if not dry_run:
            backend.delete_prefix(f"{segment_path(segment_id)}/")
    existing = _segments(backend) if not dry_run else {}
    for claim in board.claims():
        if not claim.expired(now):
            continue
        segment_id = claim.subject.removeprefix("segment/")
        if claim.subject == segment_subject(segment_id):  # a writer killed between claiming and creating its segment
            if segment_id in existing or segment_id in report.segments:
                continue
            found = report.claims
        elif claim.subject.startswith(DOCUMENT_CLAIMS):  # a builder killed (or stalled) while computing documents
            found = report.document_claims
        else:
            continue
        if dry_run or board.break_expired(claim.subject, now):  # False: renewed or taken over meanwhile
            found.append(claim.subject)
    if isinstance(backend, LocalBackend):  # an object store has no half-written objects
        for temp in _stale_temp_files(backend.root, now - temp_age_s):
            report.temp_files.append(str(temp.relative_to(backend.root)))
            if dry_run:
                continue
            if temp.is_dir():
                shutil.rmtree(temp, ignore_errors=True)
            else:
                temp.unlink(missing_ok=True)
    return report


def _segments(backend: StorageBackend) -> dict[str, dict[str, ObjectInfo]]:
    """segment id -> its objects, from one listing of `segments/`."""
    found: dict[str, dict[str, ObjectInfo]] = {}
    for key, info in backend.list_info(f"{SEGMENTS}/").items():
        segment_id, _, rest = key[len(SEGMENTS) + 1:].partition("/")
        if rest:
            found.setdefault(segment_id, {})[rest] = info
    return found


def _keep_reason(segment_id: str, objects: dict[str, ObjectInfo], board: ClaimBoard, older_than_s: float,
                 now: float, dry_run: bool) -> str | None:
    """Why an uncommitted segment must stay, or None when its writer is gone (an expired claim is broken here)."""
    subject = segment_subject(segment_id)
    claim = board.get(subject)
    if claim is not None:
        if not claim.expired(now):
            return f"its writer is alive ({claim.describe(now)})"
        if not dry_run and not board.break_expired(subject, now):
            return "its writer renewed its lease while gc ran"
        return None
    age = now - max(info.modified for info in objects.values())
    if age < older_than_s:
        return (f"no writer claims it, but it changed {age:.0f} s ago (< --older-than {older_than_s:.0f} s; "
                f"an older actcache writer may still be filling it)")
    return None


def _committed_now(backend: StorageBackend, log: CommitLog, segment_id: str) -> bool:
    """Whether a commit record now names this segment (a writer commits, then releases its claim)."""
    try:
        metadata = json.loads(backend.get(f"{segment_path(segment_id)}/{GROUP_METADATA}"))
        return bool(log.get(commit_name(metadata["attributes"]["unit_id"]))["segment"] == segment_id)
    except (OSError, KeyError, ValueError):
        return False


def _stale_temp_files(path: Path, cutoff: float) -> list[Path]:
    """Temp files and folders (`.tmp-*`, zarr's `*.partial`) outside segments, unchanged since `cutoff`."""
    stale = []
    for folder, dirs, files in os.walk(path):
        if Path(folder) == path:
            dirs[:] = [d for d in dirs if d != SEGMENTS]  # a segment's temp files go with the segment
        for name in [*files, *dirs]:
            if TEMP_MARK in name or name.endswith(ZARR_TEMP_SUFFIX):  # `.tmp-*` records, `.<name>.tmp-<pid>` folders
                entry = Path(folder) / name
                if entry.lstat().st_mtime < cutoff:
                    stale.append(entry)
        dirs[:] = [d for d in dirs if TEMP_MARK not in d]
    return sorted(stale)
