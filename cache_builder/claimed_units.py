"""Units made only of documents this writer has claimed: several writers on one cache compute each document once.

Documents are claimed by key bucket (`storage.claims.document_subject`), which no writer's corpus or batch plan
changes. The corpus is cut into groups of whole buckets, in bucket order, each closed once it holds GROUP_UNITS
units' worth of tokens; committed documents count too, so a group's units do not depend on what is cached and a
resumed single writer forms the units an uninterrupted one would. For each group a writer claims the buckets of
its missing documents, re-reads the commit records (a bucket is released only after its units are committed, so
whatever another writer finished before this claim is seen) and computes the missing documents of the buckets it
got. Buckets held by a live writer are retried later, after everything else: by then their documents are
committed, or their claim has expired and this writer takes them over. Iteration ends when every document of the
corpus is committed, by this writer or by another.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence

from actcache.storage.claims import Claim, ClaimBoard, Lease, document_subject
from actcache.storage.committed_keys import CommittedKeys

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
    """Iterate over units of claimed documents; the caller commits each unit before asking for the next.

    A group's claims are renewed by this object's `Lease` while its units run and released after the last one.
    `check(unit)` before a commit refuses a unit whose claims lapsed (the writer stalled past its lease, and
    another writer may be computing the same documents). `on_wait(holders)` is called before each pause while
    every remaining bucket is held by other live writers. Use as a context manager: closing releases every claim.
    """

    def __init__(self, docs: Sequence[TokenizedDoc], committed: CommittedKeys, board: ClaimBoard, lease_s: float, *,
                 unit_tokens: int, batch_size: int, on_wait: Callable[[list[Claim]], None] | None = None,
                 poll_s: float = POLL_SECONDS) -> None:
        groups = claim_groups(docs, unit_tokens * GROUP_UNITS)
        start = random.randrange(len(groups)) if groups else 0  # writers start apart: fewer claim conflicts
        self._todo = deque(groups[start:] + groups[:start])
        self._committed = committed
        self._lease = Lease(board, lease_s)
        self._unit_tokens, self._batch_size = unit_tokens, batch_size
        self._on_wait, self._poll_s = on_wait, poll_s

    def __enter__(self) -> ClaimedUnits:
        return self

    def __exit__(self, *exc: object) -> None:
        self._lease.close()

    def __iter__(self) -> Iterator[Unit]:
        while self._todo:
            progressed = False
            holders: list[Claim] = []
            for _ in range(len(self._todo)):
                group = self._todo.popleft()
                units, held, others = self._claim(group)
                progressed, holders = progressed or bool(held), holders + others
                try:
                    yield from units
                finally:
                    for subject in held:
                        self._lease.release(subject)
                if others:
                    self._todo.append(group)
            if not progressed and holders:  # every remaining bucket is held: its holder finishes or expires
                if self._on_wait is not None:
                    self._on_wait(holders)
                time.sleep(self._poll_s)

    def check(self, unit: Unit) -> None:
        """CacheError unless every bucket of `unit` is still claimed by this writer (call before its commit)."""
        for subject in sorted({document_subject(d.key) for d in unit.docs}):
            self._lease.check(subject)

    def _claim(self, group: list[TokenizedDoc]) -> tuple[list[Unit], list[str], list[Claim]]:
        """Claim the buckets of `group`'s missing documents: the units to compute, the buckets now held, and the
        live claims of other writers on the rest (then the group is retried later)."""
        done = self._committed.refresh()
        held, others = [], []
        for subject in sorted({document_subject(d.key) for d in group if d.key not in done}):
            holder = self._lease.try_take(subject)
            if holder is None:
                held.append(subject)
            else:
                others.append(holder)
        if not held:
            return [], [], others
        done = self._committed.refresh()  # what other writers committed before these claims
        mine = set(held)
        eligible = [d for d in group if d.key in done or document_subject(d.key) in mine]
        units, _ = pending_units(plan_units(eligible, unit_tokens=self._unit_tokens, batch_size=self._batch_size),
                                 done)
        return units, held, others
