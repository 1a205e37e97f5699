"""Where the service keeps its jobs: each a JSON record and its corpus (JSONL, tagged with the job id).

The jobs live beside the cache on the same kind of storage (storage/backends: a folder, or an S3 prefix). Records
are replaced atomically (a disk: temp file, fsync, rename; S3: one PUT), so a service killed at any moment finds
every record whole.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from actcache.cache_builder.corpus import Document
from actcache.storage.backends import open_backend
from actcache.storage.errors import InputError

__all__ = ["JobError", "JobStore", "SERVICE_FIELDS", "jobs_folder"]

SERVICE_FIELDS = ("job",)  # set by the service on every document, so `open_cache(...).documents()` names its job


class JobError(InputError):
    """A submission the service refuses (its message names the line and the fix): HTTP 400."""


def jobs_folder(cache: str) -> str:
    """Where a cache's jobs live: beside it (`<cache>.jobs`, a folder or an S3 prefix), so the cache holds only what
    `open_cache` reads."""
    return cache.rstrip("/") + ".jobs"


class JobStore:
    """The job records and corpora of one cache, on the cache's kind of storage (a disk, or S3)."""

    def __init__(self, cache: str) -> None:
        self.folder = jobs_folder(cache)
        self._backend = open_backend(self.folder)

    def save(self, record: dict[str, Any]) -> None:
        self._backend.put(f"{record['id']}.json", json.dumps(record).encode())  # atomic replace on both backends

    def records(self) -> list[dict[str, Any]]:
        """Every stored record (refuses an object that is not one, naming it)."""
        records = []
        for key in self._backend.list_prefix(""):
            if "/" in key or not key.endswith(".json"):
                continue
            try:
                records.append(json.loads(self._backend.get(key)))
            except ValueError as error:
                raise JobError(f"{self.folder}/{key}: not a job record ({error}); move it out of {self.folder}") \
                    from None
        return records

    def put_corpus(self, job_id: str, body: bytes) -> list[Document]:
        """Check the JSONL body with the builder's own loader (JobError names its bad line) and store it with `job`
        set on every line (line numbers kept, so `index` still names the submitted line); returns its documents."""
        from actcache.cache_builder.corpus import CorpusError
        from actcache.cache_builder.corpus.jsonl import JsonlLoader

        scratch = tempfile.TemporaryDirectory(prefix="actcache-upload-")
        upload = Path(scratch.name) / f"{job_id}.jsonl"
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
            scratch.cleanup()
        self._backend.put(self._corpus(job_id), "\n".join(lines).encode())
        return self.corpus(job_id)

    def corpus(self, job_id: str) -> list[Document]:
        """The stored corpus's documents, each with `job` set."""
        from actcache.cache_builder.corpus.jsonl import JsonlLoader

        with tempfile.TemporaryDirectory(prefix="actcache-corpus-") as scratch:  # the loader reads files
            path = Path(scratch) / f"{job_id}.jsonl"
            path.write_bytes(self._backend.get(self._corpus(job_id)))
            return JsonlLoader().load(path)

    def drop_corpus(self, job_id: str) -> None:
        """Forget a refused submission's corpus."""
        self._backend.delete(self._corpus(job_id))

    def _corpus(self, job_id: str) -> str:
        return f"corpora/{job_id}.jsonl"
