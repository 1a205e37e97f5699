"""Units made only of documents this writer has claimed: several writers on one cache compute each document once.

Documents are claimed by key bucket (`storage.claims.document_subject`), which no writer's corpus or batch plan
changes. The corpus is cut into groups of whole buckets, in bucket order, each closed once it holds GROUP_UNITS
units' worth of tokens; committed documents count too, so a group's units do not depend on what is cached and a
resumed single writer forms the units an uninterrupted one would. For each group a writer claims the buckets of
its missing documents, re-reads the commit records (a bucket is released only after its units are committed, so
whatever another writer finished before this claim is seen) and computes the missing documents of the buckets it
got. Buckets held by a live writer are retried later, after everything else: by then their documents are
committed, or their claim has expired (or its process is provably gone) and this writer takes them over. A group's
buckets are released once every unit of it is committed, so a caller may keep several units in flight (the Ray
pipeline does). Iteration ends when every document of the corpus is committed or in flight here, and
`check_complete` then refuses a build that left any uncommitted. The single-process builder, the Ray pipeline and
the service all run their units through this class.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence

from actcache.storage.claims import Claim, ClaimBoard, Lease, document_subject
from actcache.storage.committed_keys import CommittedKeys
from actcache.storage.errors import CacheError

from .planning import TokenizedDoc, Unit, pending_units, plan_units

__all__ = ["GROUP_UNITS", "POLL_SECONDS", "ClaimedUnits", "claim_groups"]

# Units' worth of tokens per group: documents are length-sorted within a group only. Padding on top of real tokens,
# computed for lognormal lengths (median 400, batch 8): 0.06% sorting the whole corpus, 20% for groups of 4 units,
# 11% of 8, 5% of 16. Larger groups also mean longer waits for a writer whose remaining work another one holds.
GROUP_UNITS = 16
POLL_SECONDS = 0.5  # between passes when every remaining bucket is held by another live writer


def claim_groups(docs: Sequence[TokenizedDoc], group_tokens: int) -> list[list[TokenizedDoc]]:
    """Whole buckets in bucket order, cut once a group holds at least `group_tokens` tokens."""
    buckets: dict[str, list[TokenizedDoc]] = {}
    for doc in sorted(docs, key=lambda d: d.key):
        buckets.setdefault(document_subject(doc.key), []).append(doc)
    groups: list[list[TokenizedDoc]] = []
    current: list[TokenizedDoc] = []
    size = 0
    for subject in sorted(buckets):
        current += buckets[subject]
        size += sum(d.n_tokens for d in buckets[subject])
        if size >= group_tokens:
            groups.append(current)
            current, size = [], 0
    if current:
        groups.append(current)
    return groups


class ClaimedUnits:
    """Iterate over units of claimed documents; the caller calls `committed(unit)` after committing each one.

    A group's claims are renewed by this object's `Lease` while its units run and released once all of them are
    committed. `check(unit)` before a commit refuses a unit whose claims lapsed (the writer stalled past its lease,
    and another writer may be computing the same documents). `on_wait(holders)` is called before each pause while
    every remaining bucket is held by other live writers.
    Iterating is for one thread at a time; `committed` may be called from any. Use as a context manager: closing
    releases every claim. `lease`: a lease shared with other threads of this writer (the service's workers, whose
    own plan keeps their documents apart), else one of its own.
    """

    def __init__(self, docs: Sequence[TokenizedDoc], committed: CommittedKeys, board: ClaimBoard, lease_s: float, *,
                 unit_tokens: int, batch_size: int, on_wait: Callable[[list[Claim]], None] | None = None,
                 poll_s: float = POLL_SECONDS, lease: Lease | None = None) -> None:
        groups = claim_groups(docs, unit_tokens * GROUP_UNITS)
        start = random.randrange(len(groups)) if groups else 0  # writers start apart: fewer claim conflicts
        self._todo = deque(groups[start:] + groups[:start])
        self._keys = [d.key for d in docs]
        self._committed = committed
        self._own_lease = lease is None
        self._lease = Lease(board, lease_s) if lease is None else lease
        self._unit_tokens, self._batch_size = unit_tokens, batch_size
        self._on_wait, self._poll_s = on_wait, poll_s
        self._open: dict[str, _HeldGroup] = {}  # unit id -> the claimed group it belongs to, until committed
        self._lock = threading.Lock()  # guards `_open`

    def __enter__(self) -> ClaimedUnits:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._own_lease:
            self._lease.close()
            return
        with self._lock:
            groups, self._open = {id(g): g for g in self._open.values()}, {}
        # of a shared lease, only what this object took
        self._lease.release_each([subject for group in groups.values() for subject in group.subjects])

    @property
    def taken_over(self) -> list[Claim]:
        """Claims of dead writers (lease expired, or process provably gone) that this writer took over."""
        return list(self._lease.taken_over)

    def __iter__(self) -> Iterator[Unit]:
        """The units to compute, pausing while every remaining bucket is held by another live writer."""
        for unit in self.pending():
            if unit is None:
                time.sleep(self._poll_s)
            else:
                yield unit

    def pending(self) -> Iterator[Unit | None]:
        """The units to compute, and None whenever every remaining bucket is held by another live writer: ask again
        after a pause. For a caller with units in flight, which must commit them before it waits (the buckets it is
        waiting for may be held until then)."""
        while self._todo:
            progressed = False
            holders: list[Claim] = []
            for _ in range(len(self._todo)):
                group = self._todo.popleft()
                units, held, others = self._claim(group)
                progressed, holders = progressed or bool(units) or not others, holders + others
                if held:
                    self._hold(units, held)
                yield from units
                if others:
                    self._todo.append(group)
            if not progressed and holders:  # every remaining bucket is held: its holder finishes or expires
                if self._on_wait is not None:
                    self._on_wait(holders)
                yield None

    def committed(self, unit: Unit) -> None:
        """`unit` is committed: release its group's buckets if it was the group's last unit in flight."""
        with self._lock:
            group = self._open.pop(unit.unit_id, None)
            if group is None:
                return
            group.units.discard(unit.unit_id)
            if group.units:
                return
        self._lease.release_each(group.subjects)

    def check_complete(self) -> None:
        """CacheError unless every document of the corpus is committed (call after the last unit's commit)."""
        done = self._committed.refresh()
        missing = [key for key in self._keys if key not in done]
        if missing:  # never expected: every claimed unit was committed, every other bucket was seen committed
            raise CacheError(f"{len(missing)} documents of the corpus are not committed (e.g. {missing[0]}): "
                             f"rerun the same command to build them")

    def _hold(self, units: list[Unit], subjects: list[str]) -> None:
        """Keep `subjects` claimed until every one of `units` is committed (released at once when none)."""
        if not units:
            self._lease.release_each(subjects)
            return
        group = _HeldGroup(subjects, {u.unit_id for u in units}, {d.key for u in units for d in u.docs})
        with self._lock:
            self._open.update((u.unit_id, group) for u in units)

    def check(self, unit: Unit) -> None:
        """CacheError unless every bucket of `unit` is still claimed by this writer (call before its commit)."""
        self._lease.check_each(sorted({document_subject(d.key) for d in unit.docs}))

    def _claim(self, group: list[TokenizedDoc]) -> tuple[list[Unit], list[str], list[Claim]]:
        """Claim the buckets of `group`'s missing documents: the units to compute, the buckets now held, and the
        live claims of other writers on the rest (then the group is retried later)."""
        with self._lock:  # units handed out and not committed yet count as done: never computed twice on a retry
            running = {key for g in self._open.values() for key in g.keys}
        done = self._committed.refresh() | running
        held, others = [], []
        subjects = sorted({document_subject(d.key) for d in group if d.key not in done})
        for subject, holder in zip(subjects, self._lease.try_take_each(subjects), strict=True):
            if holder is None:
                held.append(subject)
            else:
                others.append(holder)
        if not held:
            return [], [], others
        done = self._committed.refresh() | running  # what other writers committed before these claims
        mine = set(held)
        eligible = [d for d in group if d.key in done or document_subject(d.key) in mine]
        units, _ = pending_units(plan_units(eligible, unit_tokens=self._unit_tokens, batch_size=self._batch_size),
                                 done)
        return units, held, others


class _HeldGroup:
    """The buckets claimed for one group, and its units not yet committed."""

    def __init__(self, subjects: list[str], units: set[str], keys: set[str]) -> None:
        self.subjects, self.units, self.keys = subjects, units, keys
