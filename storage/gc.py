"""Collect the garbage of crashed writers: segments that no commit record names."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from .commit_log import LocalCommitLog
from .index import CommitIndex
from .layout import COMMITS, SEGMENTS
from .root import open_root

__all__ = ["collect_garbage"]


def collect_garbage(path: str | Path, older_than_s: float = 3600.0, dry_run: bool = False) -> list[str]:
    """Delete uncommitted segments not modified for `older_than_s` seconds; returns their ids.

    The age threshold protects segments that a running writer is still filling: only a unit whose writer died long
    ago is removed. Committed data is never touched.
    """
    path = Path(path)
    open_root(path)  # refuse anything that is not a cache
    committed = {r.segment for r in CommitIndex.load(LocalCommitLog(path / COMMITS)).records}
    segments = path / SEGMENTS
    if not segments.is_dir():
        return []
    cutoff = time.time() - older_than_s
    removed = []
    for folder in sorted(segments.iterdir()):
        if folder.name in committed or not folder.is_dir():
            continue
        newest = max((p.stat().st_mtime for p in folder.rglob("*")), default=folder.stat().st_mtime)
        if newest <= cutoff:
            removed.append(folder.name)
            if not dry_run:
                shutil.rmtree(folder)
    return removed
