"""`actcache submit`: send a JSONL corpus to a service and, with --wait, follow the job to its end."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from actcache.storage.errors import InputError

__all__ = ["ServiceError", "submit_corpus", "get_job", "wait_for_job"]


class ServiceError(InputError):
    """The service refused a request or cannot be reached; the message carries its answer."""


def _request(url: str, token: str, data: bytes | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    if data is not None:
        headers["Content-Type"] = "application/x-ndjson"
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            result: dict[str, Any] = json.loads(answer.read())
            return result
    except urllib.error.HTTPError as err:
        try:
            body = json.loads(err.read())
            detail = body.get("detail", "") + (f" (resets at {body['resets_at']})" if "resets_at" in body else "")
        except ValueError:
            detail = err.reason
        raise ServiceError(f"{url}: the service answered {err.code}: {detail}") from None
    except urllib.error.URLError as err:
        raise ServiceError(f"{url}: cannot reach the service ({err.reason}); check --server") from None


def submit_corpus(server: str, token: str, corpus: str | Path, name: str) -> dict[str, Any]:
    """POST the corpus file as is; the answer is the new job's record."""
    query = urllib.parse.urlencode({"name": name})
    return _request(f"{server.rstrip('/')}/v1/jobs?{query}", token, Path(corpus).read_bytes())


def get_job(server: str, token: str, job_id: str) -> dict[str, Any]:
    return _request(f"{server.rstrip('/')}/v1/jobs/{urllib.parse.quote(job_id)}", token)


def wait_for_job(server: str, token: str, job_id: str, progress: bool = True, every_s: float = 0.5) -> dict[str, Any]:
    """Poll until the job is done or failed, with a token progress bar on stderr."""
    from tqdm import tqdm

    from .jobs import TERMINAL_STATES

    with tqdm(unit="tok", unit_scale=True, desc=job_id, disable=not progress, dynamic_ncols=True) as bar:
        while True:
            record = get_job(server, token, job_id)
            done = record["progress"].get("tokens_done", 0)
            bar.total = record["progress"].get("tokens") or bar.total
            bar.update(done - bar.n)
            bar.set_postfix_str(record["state"])
            if record["state"] in TERMINAL_STATES:
                return record
            time.sleep(every_s)
