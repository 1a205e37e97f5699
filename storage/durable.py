"""Writes that survive a power loss: data fsynced before anything that points to it is published.

A commit record must never name a chunk that a crash can still take away, so chunk files are fsynced as they are
written, the segment's folders (their new entries) before the commit, and the `commits/` folder after it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_durably", "fsync_dir", "fsync_tree"]


def write_durably(path: Path, data: bytes) -> None:
    """Write `data` to `path` and fsync the file (its folder entry is the caller's `fsync_dir`/`fsync_tree`)."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Make the entries of folder `path` (files created, renamed or linked into it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root`, `root` itself and its parent (which holds its entry).

    Files already fsynced cost ~0.1 ms each here; the pass exists for what zarr wrote without fsync (metadata,
    token ids, offsets) and for the folder entries of every chunk.
    """
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))
    fsync_dir(root.parent)
