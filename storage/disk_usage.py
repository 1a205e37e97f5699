"""Bytes on disk of a cache: activation chunks of committed units, uncommitted segments, and the rest."""

from __future__ import annotations

import os
from collections.abc import Set
from dataclasses import dataclass
from pathlib import Path

from .layout import CHUNK_DIR, SEGMENTS

__all__ = ["DiskUsage", "disk_usage"]


@dataclass(frozen=True)
class DiskUsage:
    total: int  # every file of the cache
    activations: int  # activation chunks of committed segments (what the compression ratio is about)
    uncommitted: int  # every file of segments no commit names (garbage of interrupted writers, or in progress)
    segments: int  # segment folders, committed or not


def disk_usage(path: Path, committed: Set[str]) -> DiskUsage:
    """Walk the cache once; `committed` names the segments that commit records point to."""
    total = activations = uncommitted = 0
    for folder, _, files in os.walk(path):
        rel = Path(folder).relative_to(path).parts
        in_segment = len(rel) >= 2 and rel[0] == SEGMENTS
        # segments/<id>/<hook>/layer_<i>/c/...: an activation array's chunks (not token ids, offsets or texts)
        is_chunk = in_segment and len(rel) >= 5 and rel[3].startswith("layer_") and rel[4] == CHUNK_DIR
        for name in files:
            size = os.path.getsize(os.path.join(folder, name))
            total += size
            if in_segment and rel[1] not in committed:
                uncommitted += size
            elif is_chunk:
                activations += size
    seg_dir = path / SEGMENTS
    segments = sum(1 for p in seg_dir.iterdir() if p.is_dir()) if seg_dir.is_dir() else 0
    return DiskUsage(total, activations, uncommitted, segments)
