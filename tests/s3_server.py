"""A real S3-compatible server for tests: moto's server mode on 127.0.0.1, in its own process.

moto implements `If-None-Match: *` on PutObject (412 PreconditionFailed when the key exists), which is what our
commit records and claims rely on; tests/storage/test_s3_server.py checks that it holds under concurrent puts.
The fixture's own request (creating a bucket) is sent unsigned: moto does not check signatures, so the fixtures
need no S3 client of their own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

__all__ = ["S3Server", "running_s3_server", "S3_TEST_ENV", "s3_server", "s3_url"]

# Credentials moto accepts (any); the region is required by the clients.
S3_TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


@dataclass(frozen=True)
class S3Server:
    """A running server: its endpoint (for AWS_ENDPOINT_URL) and how to add buckets to it."""

    endpoint: str

    def env(self) -> dict[str, str]:
        """The standard AWS_* variables that point any client at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, **S3_TEST_ENV}

    def create_bucket(self, name: str) -> None:
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_up(endpoint: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto's server exited with code {process.returncode} before it answered")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1) as response:
                response.read()
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise RuntimeError(f"moto's server did not answer on {endpoint} within {timeout_s:.0f} s")


@contextmanager
def running_s3_server(timeout_s: float = 30.0) -> Iterator[S3Server]:
    """Start moto's server on a free loopback port; stop it (and wait for it) when the block ends."""
    for _ in range(3):  # the free port can be taken between probing and binding; try another then
        port = _free_port()
        endpoint = f"http://127.0.0.1:{port}"
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **S3_TEST_ENV},
        )
        try:
            _wait_until_up(endpoint, process, timeout_s)
        except RuntimeError:
            process.kill()
            process.wait()
            continue
        try:
            yield S3Server(endpoint)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return
    raise RuntimeError("moto's server did not start on any of three free ports")


# Fixtures (imported by tests/storage/conftest.py)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto server for the whole run (~1.5 s to start); each test gets its own bucket (`s3_url`)."""
    with running_s3_server() as server:
        yield server


@pytest.fixture
def s3_url(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """`s3://<bucket>` of a new empty bucket, with the standard AWS_* variables pointing at the test server.

    Keys are always set, so no client ever falls back to a profile or an instance-metadata endpoint.
    """
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    s3_server.create_bucket(bucket)
    return f"s3://{bucket}"
