"""`actcache serve` for real: the service runs as a subprocess on 127.0.0.1 (port 0) with tiny-llama, and every
request is real HTTP: the auth matrix, a job equal to a direct build, dedup, and a SIGKILL mid-job."""

from __future__ import annotations

import hashlib
import http.client
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from actcache.actcache_cli import build_parser, main
from actcache.cluster.service.job_store import jobs_folder
from actcache.cluster.service.users import add_user, load_users
from actcache.storage import open_cache
from actcache.storage.verify import verify_cache
from service_helpers import CLI, ENV, MAX_BODY, SENTIMENT, Service, call, capture_flags, service_in, wait_done


def _headers_only(url: str, token: str, length: int) -> int:
    """POST that announces `length` body bytes and sends none: only a server that answers before reading the body
    replies (one that read first would wait for the body until the timeout)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", "/v1/jobs?name=x")
    conn.putheader("Authorization", f"Bearer {token}")
    conn.putheader("Content-Length", str(length))
    conn.endheaders()
    status = conn.getresponse().status
    conn.close()
    return status


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("users") / "users.yaml"
    return path, {"alice": add_user(path, "alice", ("submit", "read")), "reader": add_user(path, "reader", ("read",))}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path,
            users: tuple[Path, dict[str, str]]) -> Iterator[Service]:
    yield from service_in(tmp_path_factory.mktemp("service"), tiny_llama_dir, users[0])


def test_user_add_prints_the_token_once_and_stores_only_its_hash(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "users.yaml"
    assert main(["user", "add", "carol", "--roles", "read", "--users", str(path)]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert len(token) >= 40 and token not in path.read_text()
    carol = load_users(path)["carol"]
    assert carol.roles == ("read",) and carol.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    assert main(["user", "add", "carol", "--users", str(path)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_every_token_handed_out_passes_as_a_command_line_argument(tmp_path: Path) -> None:
    """A token that began with '-' (one in 32 of them did) read as an option: `submit --token -x...` failed."""
    parser = build_parser()
    for i in range(200):
        token = add_user(tmp_path / f"users-{i}.yaml", "alice", ("read",))
        argv = ["submit", "--server", "http://127.0.0.1:1", "--token", token, "--corpus", "c.jsonl", "--name", "n"]
        assert parser.parse_args(argv).token == token


def test_auth_matrix(service: Service, users: tuple[Path, dict[str, str]]) -> None:
    tokens = users[1]
    jobs, body = f"{service.url}/v1/jobs?name=auth", b'{"text": "hello"}\n'
    assert call(jobs, None, body)[0] == 401
    assert call(jobs, "not-a-token", body)[0] == 401
    assert call(f"{service.url}/v1/jobs/abc", None)[0] == 401
    status, answer = call(jobs, tokens["reader"], body)
    assert status == 403 and "submit" in answer["detail"]
    assert call(f"{service.url}/v1/jobs/abc", tokens["reader"])[0] == 404
    # The token and the size are judged from the headers alone, before a byte of the body is read.
    assert _headers_only(service.url, "not-a-token", 1000) == 401
    assert _headers_only(service.url, tokens["alice"], MAX_BODY + 1) == 413
    big = b"".join(json.dumps({"text": f"document {i} " * 20}).encode() + b"\n" for i in range(300))
    assert len(big) > MAX_BODY and call(jobs, tokens["alice"], big)[0] == 413
    status, answer = call(jobs, tokens["alice"], b'{"text": "fine"}\n\n{"text": broken}\n')
    assert status == 400 and answer["detail"].startswith("line 3: not valid JSON")
    status, answer = call(jobs, tokens["alice"], b'{"text": "fine"}\n{"text": "x", "job": "mine"}\n')
    assert status == 400 and "line 2" in answer["detail"] and "job" in answer["detail"]
    with urllib.request.urlopen(f"{service.url}/openapi.json", timeout=30) as answer:  # what /docs renders
        assert {"/v1/jobs", "/v1/jobs/{job_id}"} <= set(json.loads(answer.read())["paths"])


def test_job_equals_a_direct_build_and_a_resubmission_computes_nothing(
        service: Service, users: tuple[Path, dict[str, str]], tiny_llama_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(SENTIMENT.read_text().splitlines(keepends=True)[:24]))
    argv = ["submit", "--server", service.url, "--token", users[1]["alice"], "--corpus", str(corpus), "--wait",
            "--json"]
    assert main([*argv, "--name", "first"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["state"] == "done" and first["computed_documents"] == 24 and first["tokens"] > 0

    direct_out = tmp_path / "direct"  # `actcache build` in a process of its own, as the service (same torch threads)
    subprocess.run([sys.executable, "-c", CLI, "build", "--model", str(tiny_llama_dir), "--corpus", str(corpus),
                    "--out", str(direct_out), "--device", "cpu", "--no-progress", *capture_flags()],
                   check=True, capture_output=True, timeout=300, env=ENV)
    served, direct = open_cache(first["cache"]), open_cache(direct_out)
    keys = sorted(d.key for d in direct.documents())
    assert sorted(d.key for d in served.documents()) == keys
    assert {d.meta["job"] for d in served.documents()} == {first["id"]}
    for layer in (1, 3):
        for key in keys:
            assert np.array_equal(served.activations("resid_post", layer, key),
                                  direct.activations("resid_post", layer, key)), (layer, key)

    assert main([*argv, "--name", "again"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["state"] == "done" and again["id"] != first["id"]
    assert (again["computed_documents"], again["reused_documents"], again["tokens"]) == (0, 24, 0)
    assert all(d.meta["job"] == [first["id"], again["id"]] for d in open_cache(first["cache"]).documents())


def test_a_killed_service_resumes_its_running_and_queued_jobs(service: Service, tiny_llama_dir: Path,
                                                              users: tuple[Path, dict[str, str]]) -> None:
    """Kills the module's service (so it runs last); its restart on the same cache finishes both jobs."""
    token = users[1]["alice"]
    lines = SENTIMENT.read_text().splitlines(keepends=True)  # documents 24.. were not sent by the tests above
    big, small = "".join(lines[24:84]).encode(), "".join(lines[84:100]).encode()  # both run, interleaved
    cache = service.cache
    before = open_cache(cache).n_documents if cache.exists() else 0
    try:
        status, running = call(f"{service.url}/v1/jobs?name=big", token, big)
        assert status == 201
        status, queued = call(f"{service.url}/v1/jobs?name=small", token, small)
        assert status == 201
        deadline = time.monotonic() + 60
        while call(f"{service.url}/v1/jobs/{running['id']}", token)[1]["progress"].get("documents_done", 0) < 8:
            assert time.monotonic() < deadline, "the big job made no progress"
            time.sleep(0.05)
    finally:
        service.kill()
    persisted = {r: json.loads((Path(jobs_folder(str(cache))) / f"{r}.json").read_text())["state"]
                 for r in (running["id"], queued["id"])}
    assert persisted[running["id"]] == "running" and persisted[queued["id"]] in ("queued", "running")
    committed = open_cache(cache).n_documents - before
    assert 0 < committed < 76

    service = Service(tiny_llama_dir, cache, users[0], service.log)
    try:
        resumed = wait_done(service.url, token, running["id"])
        finished = wait_done(service.url, token, queued["id"])
    finally:
        service.kill()
    # what was committed before the kill is not computed again
    assert resumed["reused_documents"] + finished["reused_documents"] == committed
    assert resumed["computed_documents"] + resumed["reused_documents"] == 60
    assert finished["computed_documents"] + finished["reused_documents"] == 16
    assert open_cache(cache).n_documents == before + 76 and not verify_cache(cache).problems
