"""`actcache serve` shared by many users, for real (service subprocess, real HTTP, tiny-llama): the fair queue,
quotas and `/v1/usage`, dedup against jobs in flight, and 8 concurrent `actcache submit` clients."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from actcache.actcache_cli import main
from actcache.cluster.service.job_store import jobs_folder
from actcache.cluster.service.users import add_user
from actcache.storage import open_cache
from cluster_helpers import committed_documents
from service_helpers import CLI, ENV, SENTIMENT, Service, call, call_with_headers, jsonl, service_in, wait_done

_BASE = [json.loads(line)["text"] for line in SENTIMENT.read_text().splitlines() if line.strip()]


def _texts(tag: str, n: int) -> list[str]:
    """`n` distinct documents (about 30 tokens each) that no other test sends."""
    return [f"[{tag} {i}] {_BASE[i % len(_BASE)]}" for i in range(n)]


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("users") / "users.yaml"
    names = {name: add_user(path, name, ("submit", "read")) for name in ("alice", "bob", "carol", "dave")}
    names["capped"] = add_user(path, "capped", ("submit", "read"), concurrent_jobs=1)
    names["metered"] = add_user(path, "metered", ("submit", "read"), tokens_per_day=1000)
    return path, names


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path,
            tokens: tuple[Path, dict[str, str]]) -> Iterator[Service]:
    yield from service_in(tmp_path_factory.mktemp("shared"), tiny_llama_dir, tokens[0])


def _submit(service: Service, token: str, name: str, body: bytes) -> dict[str, Any]:
    status, record = call(f"{service.url}/v1/jobs?name={name}", token, body)
    assert status == 201, record
    return record


def test_a_small_job_after_a_big_one_finishes_first(service: Service, tokens: tuple[Path, dict[str, str]]) -> None:
    alice, bob = tokens[1]["alice"], tokens[1]["bob"]
    big = _submit(service, alice, "big", jsonl(_texts("fair-big", 160)))
    small = _submit(service, bob, "small", jsonl(_texts("fair-small", 6)))
    small = wait_done(service.url, bob, small["id"])
    status, big_now = call(f"{service.url}/v1/jobs/{big['id']}", alice)
    assert status == 200 and big_now["state"] == "running", big_now  # one unit of each user in turn
    assert big_now["progress"]["documents_done"] < 160
    big = wait_done(service.url, alice, big["id"])
    assert small["finished"] < big["finished"]
    assert (big["computed_documents"], small["computed_documents"]) == (160, 6)


def test_a_job_waits_for_documents_another_job_is_computing(service: Service,
                                                            tokens: tuple[Path, dict[str, str]]) -> None:
    carol, dave = tokens[1]["carol"], tokens[1]["dave"]
    body = jsonl(_texts("in-flight", 100))
    first = _submit(service, carol, "first", body)
    second = _submit(service, dave, "second", body)  # the same documents, while the first computes them
    assert second["progress"]["tokens"] == 0 and second["reused_documents"] == 100
    first, second = (wait_done(service.url, t, r["id"]) for t, r in ((carol, first), (dave, second)))
    assert (first["computed_documents"], second["computed_documents"], second["tokens"]) == (100, 0, 0)
    assert second["finished"] >= first["finished"] - 1.0  # it waited for them (same commit, or later)
    keys = committed_documents(service.cache)
    assert len(keys) == len(set(keys)), "a document was computed twice"
    cache = open_cache(service.cache)
    for job in (first, second):  # `job` lists every job that sent a document
        _, chosen, _ = cache.pooled("resid_post", 3, "last", where={"job": job["id"]})
        assert len(chosen) == 100


def test_eight_concurrent_clients_with_overlapping_corpora(service: Service, tokens: tuple[Path, dict[str, str]],
                                                           tmp_path: Path) -> None:
    """8 `actcache submit --wait --json` processes (token from ACTCACHE_TOKEN), 4 users; client i sends documents
    10i..10i+13, so neighbours share 4 documents and the union is 84."""
    texts = _texts("eight", 84)
    users = ["alice", "bob", "carol", "dave"]
    clients = []
    for i in range(8):
        corpus = tmp_path / f"client{i}.jsonl"
        corpus.write_bytes(jsonl(texts[10 * i:10 * i + 14], doc=list(range(10 * i, 10 * i + 14))))
        env = {**ENV, "ACTCACHE_TOKEN": tokens[1][users[i % 4]]}
        clients.append(subprocess.Popen(
            [sys.executable, "-c", CLI, "submit", "--server", service.url, "--corpus", str(corpus), "--name",
             f"client{i}", "--wait", "--json", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env))
    records = []
    for client in clients:
        out, err = client.communicate(timeout=300)
        assert client.returncode == 0, err
        records.append(json.loads(out))
    assert all(r["state"] == "done" for r in records), records
    assert sum(r["computed_documents"] for r in records) == 84  # each document of the union computed once
    assert sum(r["reused_documents"] for r in records) == 8 * 14 - 84

    keys = committed_documents(service.cache)
    assert len(keys) == len(set(keys)), "a document was committed twice"
    cache = open_cache(service.cache)
    ours = [d for d in cache.documents() if "doc" in d.meta]
    assert sorted(d.meta["doc"] for d in ours) == list(range(84))  # the union, each document once
    seqs = {}
    for record in records:  # a document's `job` lists every job that sent it, in submission order
        _, full = call(f"{service.url}/v1/jobs/{record['id']}", tokens[1]["alice"])
        seqs[record["id"]] = full["seq"]
    senders = {d: [r["id"] for i, r in enumerate(records) if 10 * i <= d < 10 * i + 14] for d in range(84)}
    for record in records:
        _, chosen, metas = cache.pooled("resid_post", 1, "last", where={"job": record["id"]})
        assert sorted(m["doc"] for m in metas) == [d for d in range(84) if record["id"] in senders[d]]
    for doc in ours:
        expected = sorted(senders[doc.meta["doc"]], key=seqs.__getitem__)
        assert doc.meta["job"] == (expected[0] if len(expected) == 1 else expected)


def test_quotas_refuse_with_429_and_usage_reports(service: Service, tokens: tuple[Path, dict[str, str]]) -> None:
    capped, metered = tokens[1]["capped"], tokens[1]["metered"]
    running = _submit(service, capped, "one", jsonl(_texts("capped", 80)))
    status, answer, headers = call_with_headers(f"{service.url}/v1/jobs?name=two", capped,
                                                jsonl(_texts("capped-2", 2)))
    assert status == 429 and answer["limit"] == "concurrent_jobs" and int(headers["retry-after"]) >= 1, answer
    status, used = call(f"{service.url}/v1/usage", capped)
    assert status == 200 and (used["jobs_running"], used["concurrent_jobs"]) == (1, 1)
    wait_done(service.url, capped, running["id"])
    _submit(service, capped, "two", jsonl(_texts("capped-2", 2)))

    status, used = call(f"{service.url}/v1/usage", metered)
    assert (used["tokens_today"], used["tokens_per_day"], used["jobs_running"]) == (0, 1000, 0)
    first = wait_done(service.url, metered, _submit(service, metered, "a", jsonl(_texts("meter", 8)))["id"])
    assert 0 < first["tokens"] < 1000
    status, used = call(f"{service.url}/v1/usage", metered)
    assert used["tokens_today"] == first["tokens"]
    status, answer, headers = call_with_headers(f"{service.url}/v1/jobs?name=b", metered,
                                                jsonl(_texts("meter-b", 40)))
    assert status == 429 and answer["limit"] == "tokens_per_day", answer
    now = dt.datetime.now(dt.UTC)
    midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), dt.UTC)
    assert abs(int(headers["retry-after"]) - (midnight - now).total_seconds()) < 30
    assert abs((dt.datetime.fromisoformat(answer["resets_at"]) - midnight).total_seconds()) < 30
    again = wait_done(service.url, metered, _submit(service, metered, "a-again", jsonl(_texts("meter", 8)))["id"])
    assert again["computed_documents"] == 0  # reused documents cost nothing, so the quota lets it through
    assert call(f"{service.url}/v1/usage", metered)[1]["tokens_today"] == first["tokens"]
    assert call(f"{service.url}/v1/usage", None)[0] == 401


def test_submit_takes_the_token_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "hi"}\n')
    monkeypatch.delenv("ACTCACHE_TOKEN", raising=False)
    argv = ["submit", "--server", "http://127.0.0.1:9", "--corpus", str(corpus), "--name", "x"]
    assert main(argv) == 2
    assert "ACTCACHE_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("ACTCACHE_TOKEN", "t")
    assert main(argv) == 2  # now it gets as far as the (closed) port
    assert "cannot reach the service" in capsys.readouterr().err


def test_ctrl_c_finishes_the_units_in_flight_and_the_next_service_resumes(
        service: Service, tokens: tuple[Path, dict[str, str]], tiny_llama_dir: Path) -> None:
    """Stops the module's service (so it runs last)."""
    alice = tokens[1]["alice"]
    job = _submit(service, alice, "interrupted", jsonl(_texts("sigint", 120)))
    deadline = time.monotonic() + 60
    while call(f"{service.url}/v1/jobs/{job['id']}", alice)[1]["progress"]["documents_done"] < 4:
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.05)
    service.proc.send_signal(signal.SIGINT)
    service.proc.wait(timeout=60)
    record = json.loads((Path(jobs_folder(str(service.cache))) / f"{job['id']}.json").read_text())
    assert record["state"] == "running", record  # not failed: its unit in flight was committed, not cut off
    assert "Traceback" not in service.log.read_text()
    restarted = Service(tiny_llama_dir, service.cache, tokens[0], service.log)
    try:
        done = wait_done(restarted.url, alice, job["id"])
    finally:
        restarted.kill()
    assert done["computed_documents"] + done["reused_documents"] == 120 and done["reused_documents"] > 0
    keys = committed_documents(service.cache)
    assert len(keys) == len(set(keys))
