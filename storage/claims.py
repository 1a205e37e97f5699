"""Claims: who is working on what, as records that expire unless their owner renews them (a lease).

A claim record is {subject, owner, host, pid, expires} in the cache's `claims/` folder, published with the commit
log's exclusive put (two writers cannot both claim a subject), renewed by atomic replace, and broken by atomic
take once it has expired. A writer claims each segment before creating it and renews its claims from a background
thread, so `gc` can tell a live writer's segment from a dead one's without guessing from file ages. Several
writers on one cache use the same records to claim documents before computing them.

Expiry is wall-clock time: hosts that share a cache need synchronised clocks (NTP), well within the lease.
"""

from __future__ import annotations

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

__all__ = ["LEASE_SECONDS", "Claim", "ClaimBoard", "Lease", "segment_subject"]

LEASE_SECONDS = 60.0  # a claim not renewed for this long belongs to a writer that died or stalled
_SUBJECT = re.compile(r"^[a-z]+/[A-Za-z0-9_.-]+$")


def segment_subject(segment_id: str) -> str:
    """The subject a writer claims for a segment it fills."""
    return f"segment/{segment_id}"


@dataclass(frozen=True)
class Claim:
    """One claim: `subject` ("segment/<id>", "document/<key>") held by `owner` (one id per writer) until
    `expires` (unix time), by process `pid` on `host`."""

    subject: str
    owner: str
    host: str
    pid: int
    expires: float

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "owner": self.owner, "host": self.host, "pid": self.pid,
                "expires": self.expires}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Claim:
        return cls(str(data["subject"]), str(data["owner"]), str(data["host"]), int(data["pid"]),
                   float(data["expires"]))

    def expired(self, now: float | None = None) -> bool:
        return self.expires <= (time.time() if now is None else now)

    def describe(self, now: float | None = None) -> str:
        """'pid 123 on host h, lease expires in 42 s' (or 'expired 5 s ago')."""
        left = self.expires - (time.time() if now is None else now)
        when = f"expires in {left:.0f} s" if left > 0 else f"expired {-left:.0f} s ago"
        return f"pid {self.pid} on host {self.host}, lease {when}"


def _record_name(subject: str) -> str:
    if not _SUBJECT.match(subject):
        raise ValueError(f"claim subject {subject!r} is not of the form kind/id")
    return subject.replace("/", ".", 1) + ".json"


class ClaimBoard:
    """The claim records of one cache, over a commit log folder (exclusive put, atomic replace and take)."""

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

    def try_claim(self, claim: Claim) -> Claim | None:
        """Publish `claim`; on a conflict return the holder's live claim (an expired one is broken first)."""
        name = _record_name(claim.subject)
        while not self.log.put_if_absent(name, claim.to_dict()):
            holder = self.get(claim.subject)
            if holder is not None and not self.break_expired(holder.subject):
                return holder
        return None

    def renew(self, claim: Claim, expires: float) -> Claim | None:
        """Extend our own claim; None when it is no longer ours (it expired and was broken, or taken over)."""
        current = self.get(claim.subject)
        if current is None or current.owner != claim.owner:
            return None
        renewed = Claim(claim.subject, claim.owner, claim.host, claim.pid, expires)
        self.log.replace(_record_name(claim.subject), renewed.to_dict())
        return renewed

    def release(self, claim: Claim) -> None:
        """Drop our claim (after the commit, or when the work is abandoned); someone else's is left alone."""
        current = self.get(claim.subject)
        if current is not None and current.owner == claim.owner:
            taken = self.log.take(_record_name(claim.subject))
            if taken is not None and Claim.from_dict(taken).owner != claim.owner:  # replaced meanwhile: put back
                self.log.put_if_absent(_record_name(claim.subject), taken)

    def break_expired(self, subject: str, now: float | None = None) -> bool:
        """Remove the claim on `subject` if it has expired; False when it is live (then it is left in place).

        The record is taken atomically, so of several breakers one wins; a claim renewed between the check and
        the take is put back, and its owner keeps it.
        """
        current = self.get(subject)
        if current is not None and not current.expired(now):
            return False
        taken = self.log.take(_record_name(subject))
        if taken is not None and not Claim.from_dict(taken).expired(now):
            self.log.put_if_absent(_record_name(subject), taken)
            return False
        return True


class Lease:
    """A writer's claims, renewed every third of `lease_s` by a background thread until released or closed.

    The thread runs while a claim is held. A writer calls `check` before publishing work it claimed: a claim
    that lapsed (the process stalled for longer than the lease) may already have been broken by `gc`.
    """

    def __init__(self, board: ClaimBoard, lease_s: float = LEASE_SECONDS) -> None:
        self.board, self.lease_s = board, lease_s
        self.owner = uuid.uuid4().hex
        self.host, self.pid = socket.gethostname(), os.getpid()
        self._held: dict[str, Claim | None] = {}  # subject -> our claim, None once lost
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renew_error: OSError | None = None

    def take(self, subject: str) -> None:
        """Claim `subject`, or CacheError naming the live writer that holds it."""
        claim = Claim(subject, self.owner, self.host, self.pid, time.time() + self.lease_s)
        holder = self.board.try_claim(claim)
        if holder is not None:
            raise CacheError(f"{subject} is claimed by another writer ({holder.describe()}): wait for it, or run "
                             f"`actcache gc` once its lease has expired")
        with self._lock:
            self._held[subject] = claim
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(target=self._renew_forever, name="actcache-lease", daemon=True)
                self._thread.start()

    def check(self, subject: str) -> None:
        """CacheError unless `subject` is still ours with a third of the lease to spare (time to publish)."""
        with self._lock:
            claim = self._held.get(subject)
        current = self.board.get(subject)
        if claim is None or current is None or current.owner != self.owner:
            raise CacheError(f"this writer's claim on {subject} was lost (its lease of {self.lease_s:.0f} s lapsed "
                             f"and `gc` may have removed the work): rerun the same command to redo it")
        if current.expires - time.time() < self.lease_s / 3:
            cause = f" (renewing failed: {self._renew_error})" if self._renew_error else ""
            raise CacheError(f"this writer's claim on {subject} is about to lapse{cause}: check the disk holding "
                             f"the cache, then rerun the same command to redo the work")

    def release(self, subject: str) -> None:
        with self._lock:
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
            held, self._held = self._held, {}
        for claim in held.values():
            if claim is not None:
                self.board.release(claim)

    def _renew_forever(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            with self._lock:
                if not self._held:  # nothing to renew: stop; the next `take` starts a new thread
                    self._thread = None
                    return
                held = [(s, c) for s, c in self._held.items() if c is not None]
            for subject, claim in held:
                try:
                    renewed = self.board.renew(claim, time.time() + self.lease_s)
                except OSError as error:  # a full or flaky disk: keep trying; `check` reports it before a commit
                    self._renew_error = error
                    continue
                with self._lock:
                    if subject in self._held:
                        self._held[subject] = renewed
