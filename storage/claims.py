"""Claims: who is working on what, as records that expire unless their owner renews them (a lease).

A claim record is {subject, owner, host, pid, expires, machine, started} in the cache's `claims/` folder, published
with the commit log's exclusive put (two writers cannot both claim a subject), renewed and taken over by
compare-and-swap (`replace_if_version`: S3 If-Match, or rename-aside on a disk), and broken once it has expired.
A claim whose process provably no longer runs (checked on its own machine: storage/process_identity.py) is taken
over at once, so a rerun after a SIGKILL does not wait a lease for its own dead claims. A writer claims
each segment before creating it and renews its claims from a background thread, so `gc` can tell a live writer's
segment from a dead one's without guessing from file ages. Several writers on one cache use the same records to
claim documents before computing them.

Expiry is wall-clock time: hosts that share a cache need synchronised clocks (NTP), well within the lease.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from .commit_log import CommitLog
from .errors import CacheError
from .io_pool import io_pool
from .process_identity import process_gone, process_start, this_machine

__all__ = ["LEASE_SECONDS", "DOCUMENT_BUCKET_CHARS", "Claim", "ClaimBoard", "Lease", "segment_subject",
           "document_subject"]

LEASE_SECONDS = 60.0  # a claim not renewed for this long belongs to a writer that died or stalled
# Documents are claimed by bucket: the first 2 hex characters of their key (256 buckets), the same for every writer
# whatever its corpus or batch plan. Claiming and releasing a bucket took ~12 ms on a disk and ~15 ms on the local
# moto server (3 requests), half the compute time of a 500-token document at 20k tok/s: per key (or with 4096
# buckets, while a corpus has fewer documents than buckets) a build would take ~1.5x as long; 256 buckets bound it to
# 256 claims per group of units (cache_builder/claimed_units.py), whatever the corpus size, and let writers interleave.
DOCUMENT_BUCKET_CHARS = 2
TOMBSTONE_OWNER = "broken-by-gc"
TOMBSTONE_SECONDS = 30.0  # how long `break_expired` has to delete its tombstone before writers may take it over
_SUBJECT = re.compile(r"^[a-z]+/[A-Za-z0-9_.-]+$")


def segment_subject(segment_id: str) -> str:
    """The subject a writer claims for a segment it fills."""
    return f"segment/{segment_id}"


def document_subject(key: str) -> str:
    """The subject a writer claims before computing the document with content key `key`: its key bucket."""
    return f"document/{key[:DOCUMENT_BUCKET_CHARS]}"


@dataclass(frozen=True)
class Claim:
    """One claim: `subject` ("segment/<id>", "document/<bucket>") held by `owner` (one id per writer) until
    `expires` (unix time), by process `pid` on `host`. `machine` and `started` (process_identity.py; empty in
    records of older writers) let a writer on the same machine prove that process gone."""

    subject: str
    owner: str
    host: str
    pid: int
    expires: float
    machine: str = ""
    started: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "owner": self.owner, "host": self.host, "pid": self.pid,
                "expires": self.expires, "machine": self.machine, "started": self.started}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Claim:
        return cls(str(data["subject"]), str(data["owner"]), str(data["host"]), int(data["pid"]),
                   float(data["expires"]), str(data.get("machine", "")), int(data.get("started", 0)))

    def expired(self, now: float | None = None) -> bool:
        return self.expires <= (time.time() if now is None else now)

    def holder_gone(self) -> bool:
        """Whether the holding process provably no longer runs (decidable on its own machine only)."""
        return process_gone(self.machine, self.pid, self.started)

    def describe(self, now: float | None = None) -> str:
        """'pid 123 on host h, lease expires in 42 s' (or 'expired 5 s ago', or 'its process is gone')."""
        left = self.expires - (time.time() if now is None else now)
        when = f"expires in {left:.0f} s" if left > 0 else f"expired {-left:.0f} s ago"
        gone = ", its process is gone" if self.holder_gone() else ""
        return f"pid {self.pid} on host {self.host}, lease {when}{gone}"


def _record_name(subject: str) -> str:
    if not _SUBJECT.match(subject):
        raise ValueError(f"claim subject {subject!r} is not of the form kind/id")
    return subject.replace("/", ".", 1) + ".json"


class ClaimBoard:
    """The claim records of one cache, over a commit log folder (exclusive put, compare-and-swap, delete)."""

    def __init__(self, log: CommitLog) -> None:
        self.log = log

    def get(self, subject: str) -> Claim | None:
        try:
            return Claim.from_dict(self.log.get(_record_name(subject)))
        except FileNotFoundError:
            return None

    def claims(self) -> list[Claim]:
        """Every claim record, live or expired."""
        out = []
        for name in self.log.names():
            try:
                out.append(Claim.from_dict(self.log.get(name)))
            except FileNotFoundError:  # released while listing
                continue
        return out

    def try_claim(self, claim: Claim, taken_over: list[Claim] | None = None) -> Claim | None:
        """Publish `claim`; on a conflict return the holder's live claim. An expired claim, or one whose process
        is provably gone, is taken over with a compare-and-swap, so of several writers taking over the same claim
        exactly one gets it; the claim it replaced is appended to `taken_over`."""
        name = _record_name(claim.subject)
        while not self.log.put_if_absent(name, claim.to_dict()):
            try:
                data, version = self.log.get_versioned(name)
            except FileNotFoundError:  # released meanwhile: try to create it again
                continue
            holder = Claim.from_dict(data)
            if not holder.expired() and not holder.holder_gone():
                return holder
            if self.log.replace_if_version(name, claim.to_dict(), version) is not None:
                if taken_over is not None:
                    taken_over.append(holder)
                return None
        return None

    def renew(self, claim: Claim, expires: float) -> Claim | None:
        """Extend our own claim; None when it is no longer ours (it expired and was taken over or broken)."""
        name = _record_name(claim.subject)
        try:
            data, version = self.log.get_versioned(name)
        except FileNotFoundError:
            return None
        if Claim.from_dict(data).owner != claim.owner:
            return None
        renewed = dataclasses.replace(claim, expires=expires)
        if self.log.replace_if_version(name, renewed.to_dict(), version) is None:  # taken over between the two
            return None
        return renewed

    def release(self, claim: Claim) -> None:
        """Drop our claim (after the commit, or when the work is abandoned); someone else's is left alone.

        A holder releases with a third of its lease to spare (`Lease.check` before publishing), so the record
        read here cannot expire and change owner before the delete.
        """
        current = self.get(claim.subject)
        if current is not None and current.owner == claim.owner:
            self.log.delete(_record_name(claim.subject))

    def break_expired(self, subject: str, now: float | None = None) -> bool:
        """Remove the claim on `subject` if it has expired; False when it is live (then it is left in place).

        The expired record is first swapped for a tombstone (compare-and-swap on the version read), so a stalled
        owner that wakes up can no longer renew it (its swap fails and `Lease.check` refuses its commit), and a claim
        renewed or taken over since the read (a new version) is left alone; only then is it deleted. The tombstone
        is itself a live claim of this process for `TOMBSTONE_SECONDS`: a writer taking over a document bucket at the
        same moment waits for the delete instead of swapping in a claim that the delete would remove (or takes the
        tombstone over once it expired, or at once when this process is provably gone).
        """
        name = _record_name(subject)
        try:
            data, version = self.log.get_versioned(name)
        except FileNotFoundError:
            return True
        if not Claim.from_dict(data).expired(now):
            return False
        tombstone = Claim(subject, TOMBSTONE_OWNER, socket.gethostname(), os.getpid(), time.time() + TOMBSTONE_SECONDS,
                          this_machine(), process_start(os.getpid()) or 0)
        if self.log.replace_if_version(name, tombstone.to_dict(), version) is None:
            return False  # renewed (or taken over) between the read and the swap
        self.log.delete(name)
        return True


class Lease:
    """A writer's claims, renewed every third of `lease_s` by a background thread until released or closed.

    The thread runs while a claim is held. A writer calls `check` before publishing work it claimed: a claim
    that lapsed (the process stalled for longer than the lease) may already have been broken by `gc`. Threads of one
    writer may share a lease (the service's workers do): a subject it holds is taken again without a request and
    released when its last taker releases it.
    """

    def __init__(self, board: ClaimBoard, lease_s: float = LEASE_SECONDS) -> None:
        self.board, self.lease_s = board, lease_s
        self.owner = uuid.uuid4().hex
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.machine, self.started = this_machine(), process_start(self.pid) or 0
        self.taken_over: list[Claim] = []  # claims of dead writers this lease took over (expired or process gone)
        self._held: dict[str, Claim | None] = {}  # subject -> our claim, None once lost
        self._takers: dict[str, int] = {}  # subject -> how many takes of it are not yet released
        self._lock = threading.Lock()
        # per subject, held while renewing it: a renewal's swap on disk hides the record for a moment from `check`
        self._swapping: dict[str, threading.Lock] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renew_error: OSError | None = None

    def take(self, subject: str) -> None:
        """Claim `subject`, or CacheError naming the live writer that holds it."""
        holder = self.try_take(subject)
        if holder is not None:
            raise CacheError(f"{subject} is claimed by another writer ({holder.describe()}): wait for it, or run "
                             f"`actcache gc` once its lease has expired")

    def try_take(self, subject: str) -> Claim | None:
        """Claim `subject` (taking over an expired claim, or one whose process is provably gone); the live holder's
        claim when another writer has it."""
        with self._lock:
            if self._held.get(subject) is not None:  # held for another thread of this writer
                self._takers[subject] += 1
                return None
        claim = Claim(subject, self.owner, self.host, self.pid, time.time() + self.lease_s, self.machine,
                      self.started)
        holder = self.board.try_claim(claim, self.taken_over)
        if holder is not None:
            return holder
        with self._lock:
            self._held[subject] = claim
            self._takers[subject] = 1
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(target=self._renew_forever, name="actcache-lease", daemon=True)
                self._thread.start()
        return None

    def check(self, subject: str) -> None:
        """CacheError unless `subject` is still ours with a third of the lease to spare (time to publish)."""
        with self._lock:
            claim = self._held.get(subject)
        with self._swap_lock(subject):
            current = self.board.get(subject)
        if claim is None or current is None or current.owner != self.owner:
            raise CacheError(f"this writer's claim on {subject} was lost (its lease of {self.lease_s:.0f} s lapsed "
                             f"and `gc` may have removed the work): rerun the same command to redo it")
        if current.expires - time.time() < self.lease_s / 3:
            cause = f" (renewing failed: {self._renew_error})" if self._renew_error else ""
            raise CacheError(f"this writer's claim on {subject} is about to lapse{cause}: check the disk holding "
                             f"the cache, then rerun the same command to redo the work")

    def release(self, subject: str) -> None:
        """Release one take of `subject`; the claim goes when no take of it is left."""
        with self._lock:
            left = self._takers.pop(subject, 1) - 1
            if left > 0:
                self._takers[subject] = left
                return
            claim = self._held.pop(subject, None)
        if claim is not None:
            self.board.release(claim)

    def close(self) -> None:
        """Stop renewing and release every claim still held."""
        self._stop.set()
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        with self._lock:
            held, self._held, self._takers = self._held, {}, {}
        list(io_pool("claims").map(self.board.release, [claim for claim in held.values() if claim is not None]))

    # The same for many subjects at once, side by side: each is a request or two to the store (~10 ms on S3), and a
    # group of units spans up to all 256 document buckets.

    def try_take_each(self, subjects: list[str]) -> list[Claim | None]:
        """`try_take` of every subject, in order."""
        return list(io_pool("claims").map(self.try_take, subjects))

    def check_each(self, subjects: list[str]) -> None:
        """`check` of every subject (the first error is raised)."""
        list(io_pool("claims").map(self.check, subjects))

    def release_each(self, subjects: list[str]) -> None:
        """`release` of every subject."""
        list(io_pool("claims").map(self.release, subjects))

    def _renew_forever(self) -> None:
        # renewals run side by side: one after another, a few hundred claims at ~10 ms per request on S3 would take
        # longer than a third of a short lease
        while not self._stop.wait(self.lease_s / 3):
            with self._lock:
                if not self._held:  # nothing to renew: stop; the next `take` starts a new thread
                    self._thread = None
                    return
                held = [(s, c) for s, c in self._held.items() if c is not None]
            list(io_pool("claim-renewals").map(self._renew_one, held))

    def _renew_one(self, held: tuple[str, Claim]) -> None:
        subject, claim = held
        try:
            with self._swap_lock(subject):
                renewed = self.board.renew(claim, time.time() + self.lease_s)
        except OSError as error:  # a full or flaky disk: keep trying; `check` reports it before a commit
            self._renew_error = error
            return
        with self._lock:
            if subject in self._held:
                self._held[subject] = renewed

    def _swap_lock(self, subject: str) -> threading.Lock:
        with self._lock:
            return self._swapping.setdefault(subject, threading.Lock())
