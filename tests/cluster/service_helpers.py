"""A real `actcache serve` subprocess on 127.0.0.1 (port 0) and real HTTP calls to it, shared by the service tests."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

SENTIMENT = Path(__file__).resolve().parent.parent / "data" / "sentiment.jsonl"
CAPTURE = {"layers": "1,3", "hooks": "resid_post", "unit-tokens": "64", "batch-size": "4"}  # the service's and the
# direct build's: small units, so a kill lands between commits
MAX_BODY = 50_000
CLI = "from actcache.actcache_cli import main; raise SystemExit(main())"
# One torch thread in the service and in the direct build: CPU kernels split reductions by thread count, so equal
# counts are what makes equal bits (as tests/cluster/cluster_helpers.single_threaded says).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def capture_flags() -> list[str]:
    return [arg for name, value in CAPTURE.items() for arg in (f"--{name}", value)]


class Service:
    """One `actcache serve` subprocess; `url` is the first line it printed."""

    def __init__(self, model: Path, cache: Path, users: Path, log: Path, extra: Sequence[str] = (),
                 env: dict[str, str] | None = None) -> None:
        argv = [sys.executable, "-c", CLI, "serve", "--model", str(model), "--cache", str(cache), "--users",
                str(users), "--host", "127.0.0.1", "--port", "0", "--device", "cpu", "--max-body-mb",
                str(MAX_BODY / 2**20), *capture_flags(), *extra]
        self.cache, self.log = cache, log
        self._stderr = log.open("a")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
                                     env={**ENV, **(env or {})})
        ready, _, _ = select.select([self.proc.stdout], [], [], 180)
        line = self.proc.stdout.readline().strip() if ready and self.proc.stdout else ""
        if not line.startswith("http://127.0.0.1:"):
            self.kill()
            raise AssertionError(f"no URL on the service's first line ({line!r}); log: {log.read_text()[-2000:]}")
        self.url = line

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._stderr.close()
        if self.proc.stdout:
            self.proc.stdout.close()


def service_in(folder: Path, model_dir: Path, users_file: Path) -> Iterator[Service]:
    """A module's service: a cache and a log in `folder`, killed when the module is done (a fixture's body)."""
    running = Service(model_dir, folder / "cache", users_file, folder / "service.log")
    yield running
    running.kill()


def call_with_headers(url: str, token: str | None, body: bytes | None = None) -> tuple[int, Any, dict[str, str]]:
    """One real HTTP request: (status, JSON body, headers)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, data=body, headers={**headers, "Content-Type": "application/x-ndjson"},
                                     method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read()), dict(answer.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


def call(url: str, token: str | None, body: bytes | None = None) -> tuple[int, Any]:
    status, answer, _ = call_with_headers(url, token, body)
    return status, answer


def wait_done(url: str, token: str, job_id: str, timeout: float = 120) -> dict[str, Any]:
    """Poll a job until it ends; it must end done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, record = call(f"{url}/v1/jobs/{job_id}", token)
        assert status == 200, record
        if record["state"] in ("done", "failed"):
            assert record["state"] == "done", record["error"]
            return record
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not done after {timeout} s: {record}")


def jsonl(texts: Sequence[str], **labels: Any) -> bytes:
    """A JSONL body with one line per text; `labels` maps a field to one value per text."""
    return b"".join(json.dumps({"text": t, **{k: v[i] for k, v in labels.items()}}).encode() + b"\n"
                    for i, t in enumerate(texts))
