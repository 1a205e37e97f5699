"""The service's jobs: planned against the cache and each other, run unit by unit in fair order, persisted.

A submission is checked, stored (job_store.py) and planned at once (work_board.py): documents already cached or
being computed for another job cost nothing, the rest become the job's units, which worker threads (one per
engine runner, engines.py) take round robin across users. A job is done when its own units are committed and the
documents it waited for are in the cache; then its labels are published (a document's `job` names the newest job
that sent it). The board keeps the service's own jobs apart; other writers on the same cache (an `actcache build`, a
Ray pipeline build, another service) are kept apart by the document claims every builder takes: a worker computes
its unit as `ClaimedUnits` under the service's one lease, skipping documents another live writer holds until they
are committed (or taking them over once that writer is dead), so its unit is done when all of its documents are in
the cache. Records are saved at every state change and at most once a second while a job runs, so a service
killed at any moment restarts with every queued or running job planned again, in submission order, from what is
committed: nothing is computed twice.
"""

from __future__ import annotations

import dataclasses
import secrets
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from actcache.cache_builder.build import PreparedBuild, claim_units
from actcache.cache_builder.planning import TokenizedDoc, Unit
from actcache.storage.claims import Lease
from actcache.storage.errors import InputError

from .engines import UnitRunner
from .job_store import JobError, JobStore
from .quotas import check_quota, usage
from .users import User
from .work_board import JobWork, WorkBoard

__all__ = ["JobRecord", "JobRunner", "JobError", "TERMINAL_STATES"]

TERMINAL_STATES = ("done", "failed")
_SAVE_EVERY_S = 1.0


@dataclass
class JobRecord:
    """What `GET /v1/jobs/{id}` answers; `tokens` counts the tokens computed so far by this service run,
    `charged_tokens` every token computed for the job (what its user's daily quota counts)."""

    id: str
    name: str
    user: str
    seq: int
    state: str = "queued"
    cache: str = ""
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    computed_documents: int = 0
    reused_documents: int = 0
    tokens: int = 0
    charged_tokens: int = 0
    progress: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], folder: object) -> JobRecord:
        try:
            return cls(**data)
        except TypeError as error:
            raise JobError(f"{folder}: job {data.get('id')!r} is not a job record ({error}); move it out") from None


class JobRunner:
    """Plan, queue, persist and run jobs on the service's open cache (`prepared`, no units of its own)."""

    def __init__(self, store: JobStore, prepared: PreparedBuild, runners: Sequence[UnitRunner]) -> None:
        self.store = store
        self._prepared = prepared
        self._runners = list(runners)
        settings = prepared.settings
        self._board = WorkBoard(settings.unit_tokens, settings.batch_size)
        self._lease = Lease(prepared.writer.claims, settings.lease_s)  # the document claims of every worker
        self._cond = threading.Condition()  # guards the records and the board; workers wait on it for units
        self._tokenizing = threading.Lock()
        self._jobs = {r["id"]: JobRecord.from_dict(r, store.folder) for r in store.records()}
        self._last_saved: dict[str, float] = {}
        self._cache = str(settings.out)
        self._threads: list[threading.Thread] = []
        self._stopping = False

    def start(self) -> None:
        """Plan again every job a previous service left queued or running, then start the worker threads."""
        for record in sorted(self._jobs.values(), key=lambda r: r.seq):
            if record.state not in TERMINAL_STATES:
                record.state, record.started = "queued", None
                record.computed_documents = record.tokens = 0
                try:
                    self._admit(record, self._tokenize(self.store.corpus(record.id)), user=None)
                except InputError as err:
                    self._finish(record, "failed", str(err))
        self._threads = [threading.Thread(target=self._work, args=(run,), name=f"actcache-jobs-{i}", daemon=True)
                         for i, run in enumerate(self._runners)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Let the units in flight finish, start no more (the jobs stay live in their records: the next service
        resumes them)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()
        self._lease.close()

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._cond:
            record = self._jobs.get(job_id)
            return None if record is None else record.to_dict()

    def usage(self, user: User) -> dict[str, Any]:
        with self._cond:
            return usage(user, [r.to_dict() for r in self._jobs.values()], time.time())

    def submit(self, name: str, user: User, body: bytes) -> dict[str, Any]:
        """Check the body (JobError names its bad line) and the user's quotas (QuotaExceeded), store and plan it."""
        with self._cond:
            check_quota(user, [r.to_dict() for r in self._jobs.values()], None, time.time())
        record = JobRecord(secrets.token_hex(8), name, user.name, seq=0, cache=self._cache)
        try:
            self._admit(record, self._tokenize(self.store.put_corpus(record.id, body)), user)
        except BaseException:
            self.store.drop_corpus(record.id)
            raise
        with self._cond:  # workers may be updating it already
            return record.to_dict()

    def _tokenize(self, corpus: Sequence[Any]) -> list[TokenizedDoc]:
        with self._tokenizing:  # a fast tokenizer is not safe to call from two threads at once
            return self._prepared.tokenize(corpus)

    def _admit(self, record: JobRecord, docs: list[TokenizedDoc], user: User | None) -> None:
        """Plan the job against the cache and the live jobs; with `user`, refuse it over quota first."""
        cached = self._prepared.writer.index().docs  # read before the lock: what commits meanwhile, the board knows
        with self._cond:
            work = self._board.plan(record.id, record.user, docs, cached)
            if user is not None:
                check_quota(user, [r.to_dict() for r in self._jobs.values()], work.planned_tokens, time.time())
                record.seq = max((r.seq for r in self._jobs.values()), default=0) + 1
            self._jobs[record.id] = record
            self._board.add(work)
            record.reused_documents = work.reused
            self._set_progress(record, work)
            self._save(record)
            if work.complete:
                self._complete([work])
            self._cond.notify_all()

    def _work(self, run: UnitRunner) -> None:
        while True:
            with self._cond:
                task = None
                while not self._stopping and (task := self._board.take()) is None:
                    self._cond.wait()
                if task is None:  # the service is stopping
                    return
                work, unit = task
                record = self._jobs[work.job_id]
                if record.state == "queued":
                    record.state, record.started = "running", time.time()
                    self._save(record)
            self._run(run, work, unit, record)

    def _run(self, run: UnitRunner, work: JobWork, unit: Unit, record: JobRecord) -> None:
        def on_batch(docs: Sequence[TokenizedDoc]) -> None:
            tokens = sum(d.n_tokens for d in docs)
            with self._cond:
                record.computed_documents += len(docs)
                record.tokens += tokens
                record.charged_tokens += tokens
                self._set_progress(record, work)
                self._save(record, throttled=True)

        error = None
        try:
            with claim_units(self._prepared, unit.docs, lease=self._lease) as claimed:
                run(unit, claimed, on_batch)
                claimed.check_complete()
        except InputError as err:
            error = str(err)
        except Exception as err:  # a bug: the job fails, the service goes on with the others
            traceback.print_exc(file=sys.stderr)
            error = f"internal error: {err!r} (the service log has the traceback)"
        with self._cond:
            if error is None:
                complete = self._board.committed(work, unit)
            else:  # its documents go to the jobs that wait for them
                self._board.failed(work, unit)
                complete = []
                for other in self._board.jobs.values():
                    self._set_progress(self._jobs[other.job_id], other)
                if record.state != "failed":
                    self._finish(record, "failed", error)
            if work.failed and not work.running:
                self._board.remove(work.job_id)
            self._complete(complete)
            self._cond.notify_all()

    def _complete(self, works: list[JobWork]) -> None:
        """Publish the labels of jobs whose documents are all in the cache, then mark them done (under the lock:
        a document's label must not be published by two jobs at once)."""
        for work in works:
            self._board.remove(work.job_id)
            record = self._jobs[work.job_id]
            record.reused_documents = len(work.docs) - record.computed_documents
            try:
                self._label(record, work)
            except InputError as err:
                self._finish(record, "failed", f"its documents are cached, but labelling them failed: {err}")
                continue
            self._finish(record, "done", None)

    def _label(self, record: JobRecord, work: JobWork) -> None:
        """Give the job's documents its labels: `job` lists every job that sent the document (oldest first, so
        `where={"job": id}` finds all of a job's documents); other fields are the newest sender's."""
        from actcache.storage import open_cache
        from actcache.storage.annotations import relabel

        current = {d.key: d.meta for d in open_cache(self._cache).documents() if d.key in work.docs}
        seqs = {r.id: r.seq for r in self._jobs.values()}
        labels = {}
        for key, doc in work.docs.items():
            before = _senders(current.get(key, {}))
            senders = sorted({*before, record.id}, key=lambda job: seqs.get(job, 0))
            newest_meta = current[key] if key in current and senders[-1] != record.id else doc.meta
            labels[key] = {**newest_meta, "job": senders[0] if len(senders) == 1 else senders}
        relabel(self._cache, labels, f"job {record.id}")

    def _finish(self, record: JobRecord, state: str, error: str | None) -> None:
        record.state, record.error, record.finished = state, error, time.time()
        self._save(record)

    def _set_progress(self, record: JobRecord, work: JobWork) -> None:
        """Progress counts what the job computes itself; the rate is over its wall time, shared with other jobs."""
        elapsed = time.time() - record.started if record.started else 0.0
        rate = record.tokens / elapsed if elapsed and record.tokens else 0.0
        record.progress = {"documents": work.planned_documents, "documents_done": record.computed_documents,
                           "tokens": work.planned_tokens, "tokens_done": record.tokens, "tokens_per_s": rate,
                           "eta_s": (work.planned_tokens - record.tokens) / rate if rate else None,
                           "waiting_for_documents": len(work.awaiting)}

    def _save(self, record: JobRecord, throttled: bool = False) -> None:
        now = time.monotonic()
        if throttled and now - self._last_saved.get(record.id, 0.0) < _SAVE_EVERY_S:
            return
        self._last_saved[record.id] = now
        self.store.save(record.to_dict())


def _senders(meta: dict[str, Any]) -> list[str]:
    """The jobs a document's `job` label names (one id, or a list of them)."""
    job = meta.get("job")
    if isinstance(job, str):
        return [job]
    return [j for j in job if isinstance(j, str)] if isinstance(job, list) else []
