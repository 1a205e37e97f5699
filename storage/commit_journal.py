"""The commit journal: a time-ordered marker per commit, so that a reader lists only the commits after its manifest.

Commit records are named by unit id (a hash), so "the records newer than my manifest" is no listing of `commits/`:
a reader had to list all of them (10 requests per 10,000 units on S3, seconds). Every commit is therefore published
in two steps through `publish_commit`: first a marker `journal/<UTC time>-<unit id>` (the time fixed-width, so
names sort as times), then the record as before. A fold writes down when it began listing (`listed_at`, its own
clock); a reader of that manifest lists `journal/` only after `listed_at - MARGIN_S` (S3 StartAfter) and reads the
records of the units named there that the manifest lacks. A marker whose record does not exist (its writer died in
between) names nothing.

Why that finds every record a full listing would: a record that appeared after the fold began has a marker written
before it, stamped at most `REMARK_AFTER_S` (checked on the writer's monotonic clock; a stalled writer marks again)
plus the record's PUT earlier, on a clock at most the remaining skew apart; MARGIN_S covers all three. A record
whose own PUT stalled past `REMARK_AFTER_S` gets a second marker after it (readers may miss it until then, or for
good if its writer dies first). docs/FORMAT.md is the spec.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from .backends.backend import StorageBackend
from .commit_log import CommitLog
from .errors import CacheError
from .index import CommitRecord
from .layout import COMMITS, JOURNAL, commit_name

__all__ = ["MARGIN_S", "PRUNE_AFTER_S", "REMARK_AFTER_S", "marker_key", "prune_journal", "publish_commit",
           "recent_units"]

MARGIN_S = 600.0  # a reader lists markers from this long before its manifest's `listed_at`: commit latency + skew
REMARK_AFTER_S = MARGIN_S / 4  # a marker older than this (writer's monotonic clock) is written again before the
# record: the rest of the margin covers the record's PUT (retries included) and the clocks' skew
PRUNE_AFTER_S = 2 * MARGIN_S  # `compact` deletes markers this much older than the manifests it keeps
_MARK_ATTEMPTS = 5  # markers that each took longer than REMARK_AFTER_S: the store is not answering, give up
_STAMP = "%Y%m%dT%H%M%S.%fZ"  # e.g. 20261202T121432.123456Z: fixed width, sorts as time
_STAMP_WIDTH = len("20261202T121432.123456Z")


def publish_commit(backend: StorageBackend, record: CommitRecord) -> bool:
    """Mark the commit in the journal, then publish its record exactly once; False when the unit's record already
    existed (another writer or copy was first: its marker, or ours, names the same unit)."""
    for _ in range(_MARK_ATTEMPTS):
        marked = time.monotonic()
        _mark(backend, record.unit_id)
        if time.monotonic() - marked <= REMARK_AFTER_S:
            break  # else the marker's PUT stalled: its time may be too old for a reader's window, mark again
    else:
        raise CacheError(f"{backend.url}: every journal marker of unit {record.unit_id} took over {REMARK_AFTER_S:.0f} "
                         "s to write, so its record was not published (the unit stays uncommitted): check the "
                         "store, then resume")
    published = CommitLog(backend, COMMITS).put_if_absent(commit_name(record.unit_id), record.to_dict())
    if published and time.monotonic() - marked > REMARK_AFTER_S:
        _mark(backend, record.unit_id)  # the record's PUT stalled: a marker after it, so that no later fold misses it
    return published


def recent_units(backend: StorageBackend, listed_at: float) -> list[str]:
    """Unit ids of the markers after `listed_at - MARGIN_S` (one listing of the journal's tail), in time order,
    each once; some may have no record (their writer died between marker and record)."""
    after = marker_key(listed_at - MARGIN_S, "")
    units = [key[len(after):] for key in backend.list_prefix(f"{JOURNAL}/", start_after=after)]
    return list(dict.fromkeys(unit for unit in units if unit))


def prune_journal(backend: StorageBackend, oldest_listed_at: float) -> list[str]:
    """Delete the markers older than `oldest_listed_at - PRUNE_AFTER_S` (`oldest_listed_at`: of the manifests a
    reader may still be opening, none older); the keys deleted. Newer markers are never touched."""
    cutoff = marker_key(oldest_listed_at - PRUNE_AFTER_S, "")
    old = [key for key in backend.list_prefix(f"{JOURNAL}/") if key < cutoff]
    for key in old:
        backend.delete(key)
    return old


def _mark(backend: StorageBackend, unit_id: str) -> None:
    backend.put_if_absent(marker_key(time.time(), unit_id), unit_id.encode())


def marker_key(when: float, unit_id: str) -> str:
    """`journal/<time>-<unit id>`; with an empty unit id, the key every marker of a later time sorts after."""
    stamp = datetime.fromtimestamp(when, UTC).strftime(_STAMP)
    assert len(stamp) == _STAMP_WIDTH  # years 1000-9999
    return f"{JOURNAL}/{stamp}-{unit_id}"
