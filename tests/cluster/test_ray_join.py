"""Joining a real `ray start --head` cluster as a lab does: token auth on, `--address host:port` and `auto`.

`ray start --head` turns Ray's token authentication on when `~/.ray/auth_token` exists (e.g. left by any earlier
local `ray.init()`); `ray.init` looks for that token only for `address="auto"`. Every command here runs as a
subprocess with a private HOME (holding the token) and RAY_TMPDIR, so neither this process nor other tests see the
head or its auth mode. The head is stopped by killing its process group (never `ray stop`, which stops every
cluster on the machine).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from actcache.cache_builder.build import build_cache
from actcache.cluster.ray_connect import ClusterError, check_joinable
from cluster_helpers import assert_same_cache, settings_for, single_threaded

ACTCACHE = [sys.executable, "-m", "actcache.actcache_cli"]
BUILD_FLAGS = ["--layers", "all", "--unit-tokens", "512", "--batch-size", "4", "--stages", "2", "--no-progress"]
FAILS_WITHIN_S = 20  # a refused join: CLI start-up (imports) + checks, never Ray's 20 s+ of retries


@dataclass(frozen=True)
class Head:
    port: int
    env: dict[str, str]  # HOME with the token, the head's RAY_TMPDIR: what a shell on the head node has


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment minus any Ray address or auth settings (other tests may have set them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    return env | extra


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    """One real head node (4 CPUs, no dashboard) with token auth on because ~/.ray/auth_token exists."""
    home = tmp_path_factory.mktemp("head-home")
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text("a0c4e8f4b0d54d0e9e7c2b1a6f3d5e71")
    ray_tmp = tempfile.mkdtemp(prefix="rayj", dir="/tmp")  # socket paths must stay short
    env = _clean_env(HOME=str(home), RAY_TMPDIR=ray_tmp)
    port = _free_port()
    log = home / "head.log"
    with open(log, "w") as out:
        head = subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), "start", "--head", "--port", str(port), "--num-cpus", "4",
             "--include-dashboard", "false", "--disable-usage-stats", "--block"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        assert "Token authentication is enabled" in log.read_text()  # the setting this file is about
        yield Head(port, env)
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            try:
                head.wait(timeout=5)
            except subprocess.TimeoutExpired:
                continue
        subprocess.run(["rm", "-rf", ray_tmp], check=False)


@pytest.fixture(scope="module")
def reference_short(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path, short_corpus: Path) -> Path:
    """The single-process cache of the short corpus: what a build through the cluster must reproduce."""
    out = tmp_path_factory.mktemp("reference-short") / "cache"
    with single_threaded():
        build_cache(settings_for(tiny_llama_dir, short_corpus, out))
    return out


def _build(address: str, model: Path, corpus: Path, out: Path, env: dict[str, str],
           ) -> subprocess.CompletedProcess[str]:
    command = [*ACTCACHE, "build", "--model", str(model), "--corpus", str(corpus), "--out", str(out), *BUILD_FLAGS,
               "--address", address]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused join prints (exit 2, no traceback)."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("actcache: error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("how", ["host:port", "auto"])
def test_build_joins_token_auth_head(ray_head: Head, how: str, tiny_llama_dir: Path, short_corpus: Path,
                                     reference_short: Path, tmp_path: Path) -> None:
    address = f"127.0.0.1:{ray_head.port}" if how == "host:port" else "auto"
    out = tmp_path / "cache"
    result = _build(address, tiny_llama_dir, short_corpus, out, ray_head.env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pipeline: 1 replica(s) x 2 stage(s)" in result.stdout
    assert_same_cache(reference_short, out)


@pytest.mark.parametrize(("token_env", "expected"), [
    ({}, "has no token"),  # a machine the lab has not given the token
    ({"RAY_AUTH_TOKEN": "not-the-cluster-token"}, "rejected this machine's auth token"),
    ({"RAY_AUTH_MODE": "disabled"}, "RAY_AUTH_MODE=disabled"),
])
def test_refused_auth_is_one_line(ray_head: Head, token_env: dict[str, str], expected: str, tiny_llama_dir: Path,
                                  short_corpus: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"  # this user has no ~/.ray/auth_token
    home.mkdir()
    env = ray_head.env | {"HOME": str(home)} | token_env
    started = time.monotonic()
    result = _build(f"127.0.0.1:{ray_head.port}", tiny_llama_dir, short_corpus, tmp_path / "cache", env)
    line = _refusal(result)
    assert time.monotonic() - started < FAILS_WITHIN_S
    assert expected in line and "ray get-auth-token" in line and "~/.ray/auth_token" in line
    assert not (tmp_path / "cache").exists()


def test_version_mismatch_is_one_line(ray_head: Head, tiny_llama_dir: Path, short_corpus: Path,
                                      tmp_path: Path) -> None:
    """The head's recorded versions are rewritten to an older Ray (as if started from another venv), then put back."""
    kv = ("import json, sys\n"
          "from ray._raylet import GcsClient\n"
          "from ray._common.usage.usage_constants import CLUSTER_METADATA_KEY as KEY\n"
          "from ray._private.ray_constants import KV_NAMESPACE_CLUSTER as NS\n"
          "client = GcsClient(address=sys.argv[1])\n"
          "if len(sys.argv) > 2:\n"
          "    client.internal_kv_put(KEY, sys.argv[2].encode(), True, NS)\n"
          "print(client.internal_kv_get(KEY, NS).decode())\n")
    env = ray_head.env | {"RAY_AUTH_MODE": "token"}
    address = f"127.0.0.1:{ray_head.port}"

    def metadata(*new: str) -> str:
        return subprocess.run([sys.executable, "-c", kv, address, *new], env=env, capture_output=True, text=True,
                              check=True, timeout=60).stdout.strip()

    original = metadata()
    metadata(json.dumps(json.loads(original) | {"ray_version": "2.51.0"}))
    try:
        started = time.monotonic()
        line = _refusal(_build(address, tiny_llama_dir, short_corpus, tmp_path / "cache", ray_head.env))
        assert time.monotonic() - started < FAILS_WITHIN_S
        assert "runs Ray 2.51.0" in line and "the same image or venv on every node" in line
    finally:
        metadata(original)


def test_port_that_is_not_a_ray_head() -> None:
    """Something listens (a typo'd port of another service) but never speaks gRPC: refused, not retried for 40 s."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        with pytest.raises(ClusterError) as error:
            check_joinable(f"127.0.0.1:{silent.getsockname()[1]}", timeout=1.0)
    assert time.monotonic() - started < 3
    assert "not a Ray head's GCS port" in str(error.value) and "ray start --head --port" in str(error.value)

