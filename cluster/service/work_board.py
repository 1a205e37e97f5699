"""The service's shared plan: which job computes which document, and which unit runs next.

Every document has at most one owner among the live jobs: a job computes only what is neither cached nor owned by
another job, and waits for the rest (counted reused). Units are handed out round robin across users, then across
each user's jobs, so a small job submitted after a big one is not starved. A job whose unit fails gives its
documents back; a job that waits for them takes them over, so no waiting job hangs on a failed one.
Not thread-safe on its own: the job runner calls it under one lock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from actcache.cache_builder.planning import TokenizedDoc, Unit, plan_units

__all__ = ["JobWork", "WorkBoard"]


@dataclass
class JobWork:
    """One live job's share of the plan."""

    job_id: str
    user: str
    docs: dict[str, TokenizedDoc]  # every distinct document of the job, by key
    units: deque[Unit] = field(default_factory=deque)  # its own units not yet handed out
    running: int = 0  # its own units handed out and not yet finished
    awaiting: set[str] = field(default_factory=set)  # documents another job computes for it
    reused: int = 0  # documents cached before the job, or computed by another job
    planned_documents: int = 0  # documents it computes itself
    planned_tokens: int = 0  # and their tokens
    failed: bool = False

    @property
    def complete(self) -> bool:
        return not self.failed and not self.units and not self.running and not self.awaiting


class WorkBoard:
    """Owners of documents being computed, and the fair order of the units that compute them."""

    def __init__(self, unit_tokens: int, batch_size: int) -> None:
        self._unit_tokens, self._batch_size = unit_tokens, batch_size
        self.jobs: dict[str, JobWork] = {}
        self._owner: dict[str, str] = {}  # document key -> the live job computing it
        self._done: set[str] = set()  # documents committed since the service started
        self._users: deque[str] = deque()  # round-robin order of users with live jobs
        self._user_jobs: dict[str, deque[str]] = {}

    def plan(self, job_id: str, user: str, docs: Sequence[TokenizedDoc], cached: Collection[str]) -> JobWork:
        """The job's share (not yet added): what is cached or owned is reused, the rest planned into units."""
        work = JobWork(job_id, user, {d.key: d for d in docs})
        own = []
        for doc in docs:
            if doc.key in cached or doc.key in self._done:
                work.reused += 1
            elif doc.key in self._owner:
                work.awaiting.add(doc.key)
                work.reused += 1
            else:
                own.append(doc)
        self._plan_own(work, own)
        return work

    def add(self, work: JobWork) -> None:
        """Make the job live: it owns its planned documents and its units join the fair order."""
        self.jobs[work.job_id] = work
        for unit in work.units:
            self._owner.update((d.key, work.job_id) for d in unit.docs)
        if work.user not in self._user_jobs:
            self._user_jobs[work.user] = deque()
            self._users.append(work.user)
        self._user_jobs[work.user].append(work.job_id)

    def take(self) -> tuple[JobWork, Unit] | None:
        """The next unit: the next user in turn with work, then that user's next job in turn with work."""
        for _ in range(len(self._users)):
            user = self._users[0]
            self._users.rotate(-1)
            jobs = self._user_jobs[user]
            for _ in range(len(jobs)):
                work = self.jobs[jobs[0]]
                jobs.rotate(-1)
                if work.units and not work.failed:
                    work.running += 1
                    return work, work.units.popleft()
        return None

    def committed(self, work: JobWork, unit: Unit) -> list[JobWork]:
        """A unit is in the cache: its documents are done for everyone; returns the jobs that are now complete."""
        work.running -= 1
        keys = {d.key for d in unit.docs}
        self._done |= keys
        for key in keys:
            self._owner.pop(key, None)
        for other in self.jobs.values():
            other.awaiting -= keys
        return [w for w in self.jobs.values() if w.complete]

    def failed(self, work: JobWork, unit: Unit | None) -> None:
        """The job fails: its unit (if any) and its units not yet started go back to jobs waiting for them."""
        if unit is not None:
            work.running -= 1
        work.failed = True
        given_back = [d for u in ([unit] if unit else []) + list(work.units) for d in u.docs]
        work.units.clear()
        for doc in given_back:
            self._owner.pop(doc.key, None)
        for other in self.jobs.values():  # in submission order: the oldest waiting job takes them over
            taken = [d for d in given_back if d.key in other.awaiting and d.key not in self._owner]
            if taken and not other.failed:
                other.awaiting -= {d.key for d in taken}
                other.reused -= len(taken)
                self._plan_own(other, taken)
                self._owner.update((d.key, other.job_id) for d in taken)

    def remove(self, job_id: str) -> None:
        """Forget a finished job (done or failed, nothing of it running)."""
        work = self.jobs.pop(job_id)
        jobs = self._user_jobs[work.user]
        jobs.remove(job_id)
        if not jobs:
            del self._user_jobs[work.user]
            self._users.remove(work.user)

    def _plan_own(self, work: JobWork, docs: Sequence[TokenizedDoc]) -> None:
        units = plan_units(docs, unit_tokens=self._unit_tokens, batch_size=self._batch_size) if docs else []
        work.units.extend(units)
        work.planned_documents += len(docs)
        work.planned_tokens += sum(u.n_tokens for u in units)
