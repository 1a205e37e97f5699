"""Where the service keeps its jobs: each a JSON record and its corpus (JSONL, tagged with the job id).

All file handling of the jobs lives here, behind `jobs_folder`, so that the jobs can move to a storage backend
beside an object-store cache without touching the queue. Records are rewritten atomically (temp file, fsync,
rename), so a service killed at any moment finds every record whole.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from actcache.cache_builder.corpus import Document
from actcache.storage.errors import InputError

__all__ = ["JobError", "JobStore", "SERVICE_FIELDS", "jobs_folder"]

SERVICE_FIELDS = ("job",)  # set by the service on every document, so `open_cache(...).documents()` names its job


class JobError(InputError):
    """A submission the service refuses (its message names the line and the fix): HTTP 400."""


def jobs_folder(cache: str) -> Path:
    """Where a cache's jobs live: beside it, so the cache holds only what `open_cache` reads."""
    if "://" in cache:
        raise JobError(f"--cache {cache}: the service keeps its jobs beside a local cache only, for now; give a "
                       f"folder")
    path = Path(cache)
    return path.with_name(path.name + ".jobs")


class JobStore:
    """The job records and corpora of one cache."""

    def __init__(self, cache: str) -> None:
        self.folder = jobs_folder(cache)
        self.folder.mkdir(parents=True, exist_ok=True)

    def save(self, record: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{record['id']}.")
        with os.fdopen(fd, "w") as out:
            json.dump(record, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.folder / f"{record['id']}.json")

    def records(self) -> list[dict[str, Any]]:
        """Every stored record (refuses a file that is not one, naming it)."""
        records = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                records.append(json.loads(path.read_text()))
            except ValueError as error:
                raise JobError(f"{path}: not a job record ({error}); move it out of {self.folder}") from None
        return records

    def put_corpus(self, job_id: str, body: bytes) -> list[Document]:
        """Check the JSONL body with the builder's own loader (JobError names its bad line) and store it with `job`
        set on every line (line numbers kept, so `index` still names the submitted line); returns its documents."""
        from actcache.cache_builder.corpus import CorpusError
        from actcache.cache_builder.corpus.jsonl import JsonlLoader

        upload = self.folder / f"{job_id}.upload.jsonl"
        upload.write_bytes(body)
        try:
            docs = JsonlLoader().load(upload)
            if not docs:
                raise JobError("the body has no non-empty documents; send one JSON object with a \"text\" per line")
            for doc in docs:
                if clash := [k for k in SERVICE_FIELDS if k in doc.meta]:
                    raise JobError(f"line {doc.meta['index']}: field(s) {clash} are set by the service; rename them")
            lines = [json.dumps({**json.loads(line), "job": job_id}) if line.strip() else ""
                     for line in body.decode("utf-8-sig").split("\n")]
        except CorpusError as err:
            message = re.sub(re.escape(str(upload)) + r":(\d+)", r"line \1", str(err))
            raise JobError(message.replace(str(upload), "the body")) from None
        finally:
            upload.unlink()
        self._corpus(job_id).write_text("\n".join(lines))
        return self.corpus(job_id)

    def corpus(self, job_id: str) -> list[Document]:
        """The stored corpus's documents, each with `job` set."""
        from actcache.cache_builder.corpus.jsonl import JsonlLoader

        return JsonlLoader().load(self._corpus(job_id))

    def drop_corpus(self, job_id: str) -> None:
        """Forget a refused submission's corpus."""
        self._corpus(job_id).unlink(missing_ok=True)

    def _corpus(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.jsonl"
