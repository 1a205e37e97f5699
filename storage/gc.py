"""Collect the garbage of crashed writers: uncommitted segments whose writer is gone, and stale temp files.

A writer claims each segment before creating it and renews the claim while it lives (storage/claims.py), so a
segment is removed only when its claim has expired (or, for a segment with no claim, e.g. one written by an older
actcache, when it is older than `older_than_s`). Committed data is never touched: the commit record is looked up
again after the claim, so a unit that was committed while gc ran is kept.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .atomic_dir import TEMP_MARK
from .claims import LEASE_SECONDS, ClaimBoard, segment_subject
from .commit_log import LocalCommitLog
from .index import CommitIndex
from .layout import CLAIMS, COMMITS, SEGMENTS, commit_name
from .root import open_root

__all__ = ["GarbageReport", "collect_garbage"]

ZARR_TEMP_SUFFIX = ".partial"  # zarr's LocalStore writes `<key>.<uuid>.partial`, then renames it into place


@dataclass
class GarbageReport:
    """What gc removed (or would remove, in a dry run) and what it kept, with the reason for each kept segment."""

    segments: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)  # paths relative to the cache
    claims: list[str] = field(default_factory=list)  # expired claims on segments that no longer exist
    kept: dict[str, str] = field(default_factory=dict)  # uncommitted segment -> why it was kept


def collect_garbage(path: str | Path, older_than_s: float = 3600.0, dry_run: bool = False,
                    temp_age_s: float = LEASE_SECONDS) -> GarbageReport:
    """Remove uncommitted segments whose writer is gone, and temp files older than `temp_age_s`.

    A segment whose claim is live is kept (its writer renews it); one whose claim expired is removed at once; one
    with no claim falls back to its age (`older_than_s` since its last change). A temp file lives for
    milliseconds, so one older than a lease was left by a killed process.
    """
    path = Path(path)
    open_root(path)  # refuse anything that is not a cache
    log = LocalCommitLog(path / COMMITS)
    committed = {r.segment for r in CommitIndex.load(log).records}
    board = ClaimBoard(LocalCommitLog(path / CLAIMS))
    report = GarbageReport()
    now = time.time()
    segments = path / SEGMENTS
    for folder in sorted(segments.iterdir()) if segments.is_dir() else []:
        if folder.name in committed or not folder.is_dir():
            continue
        reason = _keep_reason(folder, board, older_than_s, now, dry_run)
        if reason is None and _committed_now(log, folder):
            reason = "committed while gc ran"
        if reason is not None:
            report.kept[folder.name] = reason
            continue
        report.segments.append(folder.name)
        if not dry_run:
            shutil.rmtree(folder)
    for claim in board.claims():  # a writer killed between claiming and creating its segment
        segment_id = claim.subject.removeprefix("segment/")
        if claim.subject == segment_subject(segment_id) and claim.expired(now) and not (segments / segment_id).exists():
            report.claims.append(claim.subject)
            if not dry_run:
                board.break_expired(claim.subject, now)
    for temp in _stale_temp_files(path, now - temp_age_s):
        report.temp_files.append(str(temp.relative_to(path)))
        if dry_run:
            continue
        if temp.is_dir():
            shutil.rmtree(temp, ignore_errors=True)
        else:
            temp.unlink(missing_ok=True)
    return report


def _keep_reason(folder: Path, board: ClaimBoard, older_than_s: float, now: float, dry_run: bool) -> str | None:
    """Why an uncommitted segment must stay, or None when its writer is gone (an expired claim is broken here)."""
    subject = segment_subject(folder.name)
    claim = board.get(subject)
    if claim is not None:
        if not claim.expired(now):
            return f"its writer is alive ({claim.describe(now)})"
        if not dry_run and not board.break_expired(subject, now):
            return "its writer renewed its lease while gc ran"
        return None
    age = now - max((p.stat().st_mtime for p in folder.rglob("*")), default=folder.stat().st_mtime)
    if age < older_than_s:
        return (f"no writer claims it, but it changed {age:.0f} s ago (< --older-than {older_than_s:.0f} s; "
                f"an older actcache writer may still be filling it)")
    return None


def _committed_now(log: LocalCommitLog, folder: Path) -> bool:
    """Whether a commit record now names this segment (a writer commits, then releases its claim)."""
    try:
        unit_id = json.loads((folder / "zarr.json").read_text())["attributes"]["unit_id"]
        return bool(log.get(commit_name(unit_id))["segment"] == folder.name)
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
