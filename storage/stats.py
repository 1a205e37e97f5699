"""Bytes on disk of a cache, split into activation chunks and the rest."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .layout import DOC_OFFSETS, SEGMENTS, TOKEN_IDS

__all__ = ["DiskUsage", "disk_usage"]


@dataclass(frozen=True)
class DiskUsage:
    total: int
    activations: int
    segments: int


def disk_usage(path: Path) -> DiskUsage:
    total = activations = 0
    for folder, _, files in os.walk(path):
        rel = Path(folder).relative_to(path).parts
        in_chunks = len(rel) >= 4 and rel[0] == SEGMENTS and rel[2] not in (TOKEN_IDS, DOC_OFFSETS) and "c" in rel
        for name in files:
            size = os.path.getsize(os.path.join(folder, name))
            total += size
            if in_chunks:
                activations += size
    seg_dir = path / SEGMENTS
    segments = sum(1 for p in seg_dir.iterdir() if p.is_dir()) if seg_dir.is_dir() else 0
    return DiskUsage(total, activations, segments)
