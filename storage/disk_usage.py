"""Bytes stored by a cache: activation chunks of committed units, uncommitted segments, and the rest."""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass

from .backends.backend import StorageBackend
from .layout import CHUNK_DIR, SEGMENTS

__all__ = ["DiskUsage", "disk_usage"]


@dataclass(frozen=True)
class DiskUsage:
    total: int  # every object of the cache
    activations: int  # activation chunks of committed segments (what the compression ratio is about)
    uncommitted: int  # every object of segments no commit names (garbage of interrupted writers, or in progress)
    segments: int  # segments, committed or not


def disk_usage(backend: StorageBackend, committed: Set[str]) -> DiskUsage:
    """One listing of the cache; `committed` names the segments that commit records point to."""
    total = activations = uncommitted = 0
    segments: set[str] = set()
    for key, info in backend.list_info("").items():
        total += info.size
        parts = key.split("/")
        if len(parts) < 3 or parts[0] != SEGMENTS:
            continue
        segments.add(parts[1])
        if parts[1] not in committed:
            uncommitted += info.size
        # segments/<id>/<hook>/layer_<i>/c/...: an activation array's chunks (not token ids, offsets or texts)
        elif len(parts) >= 6 and parts[3].startswith("layer_") and parts[4] == CHUNK_DIR:
            activations += info.size
    return DiskUsage(total, activations, uncommitted, len(segments))
