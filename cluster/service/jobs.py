"""The service's jobs: each a JSON record and its corpus in a folder next to the cache, run one at a time.

A job's record is rewritten atomically (temp file + rename) at every state change and at most once a second while
it runs, so a service killed at any moment restarts with every queued or running job queued again, in submission
order; the build itself resumes from its committed units, so nothing is computed twice.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import secrets
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actcache.storage.errors import InputError

__all__ = ["JobRecord", "JobRunner", "JobError", "TERMINAL_STATES"]

TERMINAL_STATES = ("done", "failed")
_SAVE_EVERY_S = 1.0
_SERVICE_FIELDS = ("job",)  # set by the service on every document, so `open_cache(...).documents()` names its job


class JobError(InputError):
    """A submission the service refuses (its message names the line and the fix): HTTP 400."""


@dataclass
class JobRecord:
    """What `GET /v1/jobs/{id}` answers; `tokens` counts the tokens computed so far."""

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
    progress: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class JobRunner:
    """Queue, persist and run jobs through `build_cache` with the service's resident model."""

    def __init__(self, folder: str | Path, settings: Any, model: Any) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._settings = settings  # BuildSettings: the operator's capture spec; corpus and out are set per job
        self._model = model
        self._lock = threading.Lock()
        self._queue: queue.Queue[str] = queue.Queue()
        self._jobs = {r.id: r for r in self._load_records()}
        self._last_saved: dict[str, float] = {}

    def start(self) -> None:
        """Queue again every job a previous service left queued or running, then start the worker thread."""
        for record in sorted(self._jobs.values(), key=lambda r: r.seq):
            if record.state not in TERMINAL_STATES:
                record.state = "queued"
                self._save(record)
                self._queue.put(record.id)
        threading.Thread(target=self._work, name="actcache-jobs", daemon=True).start()

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._jobs.get(job_id)
            return None if record is None else record.to_dict()

    def submit(self, name: str, user: str, body: bytes) -> dict[str, Any]:
        """Check the JSONL body (JobError names its bad line), store it tagged with the job id, and queue it."""
        job_id = secrets.token_hex(8)
        _write_corpus(body, self._corpus(job_id), job_id)
        with self._lock:
            seq = max((r.seq for r in self._jobs.values()), default=0) + 1
            record = JobRecord(job_id, name, user, seq, cache=str(self._settings.out))
            self._jobs[job_id] = record
            self._save(record)
        self._queue.put(job_id)
        return record.to_dict()

    def _corpus(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.jsonl"

    def _work(self) -> None:
        while True:
            self._run(self._jobs[self._queue.get()])

    def _run(self, record: JobRecord) -> None:
        from actcache.cache_builder.build import BuildReport, build_cache

        def progress(report: BuildReport, documents: int, tokens: int) -> None:
            rate = report.built_tokens / report.seconds if report.seconds else 0.0
            with self._lock:
                record.computed_documents, record.tokens = report.built_documents, report.built_tokens
                record.reused_documents = report.reused_documents
                record.progress = {"documents": documents, "documents_done": report.built_documents,
                                   "tokens": tokens, "tokens_done": report.built_tokens, "tokens_per_s": rate,
                                   "eta_s": (tokens - report.built_tokens) / rate if rate else None}
                self._save(record, throttled=True)

        with self._lock:
            record.state, record.started = "running", time.time()
            self._save(record)
        settings = dataclasses.replace(self._settings, corpus=self._corpus(record.id), progress=False)
        try:
            build_cache(settings, self._model, progress)
            state, error = "done", None
        except InputError as err:
            state, error = "failed", str(err)
        except Exception as err:  # a bug: the job fails, the service goes on with the next one
            traceback.print_exc(file=sys.stderr)
            state, error = "failed", f"internal error: {err!r} (the service log has the traceback)"
        with self._lock:
            record.state, record.error, record.finished = state, error, time.time()
            self._save(record)

    def _save(self, record: JobRecord, throttled: bool = False) -> None:
        now = time.monotonic()
        if throttled and now - self._last_saved.get(record.id, 0.0) < _SAVE_EVERY_S:
            return
        self._last_saved[record.id] = now
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{record.id}.")
        with os.fdopen(fd, "w") as out:
            json.dump(record.to_dict(), out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.folder / f"{record.id}.json")

    def _load_records(self) -> list[JobRecord]:
        records = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                records.append(JobRecord(**json.loads(path.read_text())))
            except (ValueError, TypeError) as error:
                raise JobError(f"{path}: not a job record ({error}); move it out of {self.folder}") from None
        return records


def _write_corpus(body: bytes, path: Path, job_id: str) -> None:
    """Validate the body with the builder's own JSONL loader, then store it with `job` set on every line (line
    numbers kept, so `index` still names the submitted line)."""
    from actcache.cache_builder.corpus import CorpusError
    from actcache.cache_builder.corpus.jsonl import JsonlLoader

    upload = path.with_suffix(".upload.jsonl")
    upload.write_bytes(body)
    try:
        docs = JsonlLoader().load(upload)
        if not docs:
            raise JobError("the body has no non-empty documents; send one JSON object with a \"text\" per line")
        for doc in docs:
            if clash := [k for k in _SERVICE_FIELDS if k in doc.meta]:
                raise JobError(f"line {doc.meta['index']}: field(s) {clash} are set by the service; rename them")
        lines = [json.dumps({**json.loads(line), "job": job_id}) if line.strip() else ""
                 for line in body.decode("utf-8-sig").split("\n")]
    except CorpusError as err:
        message = re.sub(re.escape(str(upload)) + r":(\d+)", r"line \1", str(err))
        raise JobError(message.replace(str(upload), "the body")) from None
    finally:
        upload.unlink()
    path.write_text("\n".join(lines))
