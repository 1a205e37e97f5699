"""A Ray pipeline build, or a service job, and an `actcache build` process on one cache at once: each document is
computed once.

The CLI writer (a real process) claims its corpus's document buckets and is SIGSTOPped after its first commit, so
it is alive and holds claims on documents it has not computed yet while the other writer (a pipeline build on a
real Ray cluster, or a real `actcache serve` process) runs over a corpus that contains 12 of them and 16 more. The
other writer computes what nobody holds, waits for the rest, and finishes once the CLI writer, resumed, has
committed them. Every document is cut to MAX_LENGTH tokens so
that no batch pads and the bits do not depend on batch composition (tests/cache_builder/test_many_writers.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from actcache.cache_builder.build import build_cache
from actcache.cluster.pipeline import PipelineReport, build_distributed
from actcache.cluster.service.users import add_user
from actcache.storage import open_cache, verify_cache
from actcache.storage.backends import open_backend
from actcache.storage.committed_keys import CommittedKeys
from cluster_helpers import settings_for
from service_helpers import Service, call, wait_done

SENTIMENT = Path(__file__).resolve().parent.parent / "data" / "sentiment.jsonl"
MAX_LENGTH = 16  # every text of sentiment.jsonl has at least 17 tokens
CAPTURE = {"layers": "1,3", "hooks": ("resid_post",), "max_length": MAX_LENGTH}  # the service's (service_helpers)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(lines))
    return path


@pytest.fixture
def corpora(tmp_path: Path) -> tuple[list[str], Path, Path]:
    """36 documents: the CLI writer's first 20, the other writer's last 28 (12 in common)."""
    pool = SENTIMENT.read_text().splitlines(keepends=True)[:36]
    return pool, _write(tmp_path / "cli.jsonl", pool[:20]), _write(tmp_path / "other.jsonl", pool[8:])


@pytest.fixture
def reference(tmp_path: Path, tiny_llama_dir: Path, corpora: tuple[list[str], Path, Path]) -> Path:
    """All 36 documents built by one writer."""
    out = tmp_path / "reference"
    build_cache(settings_for(tiny_llama_dir, _write(tmp_path / "all.jsonl", corpora[0]), out, **CAPTURE))
    return out


@contextmanager
def _stopped_cli_writer(model: Path, corpus: Path, out: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """An `actcache build` process SIGSTOPped after its first commit, holding claims on all 20 of its documents
    (unit-tokens 32: they form one claim group, claimed before its first unit; a lease far longer than the test);
    yields it and how many documents it had committed. Killed on exit if still running."""
    cli = subprocess.Popen([sys.executable, "-m", "actcache.actcache_cli", "build", "--model", str(model), "--corpus",
                            str(corpus), "--out", str(out), "--layers", "1,3", "--hooks", "resid_post",
                            "--max-length", str(MAX_LENGTH), "--batch-size", "1", "--unit-tokens", "32",
                            "--lease-seconds", "600", "--no-progress"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        committed = CommittedKeys(open_backend(out))
        deadline = time.monotonic() + 120
        while not committed.refresh():
            assert cli.poll() is None and time.monotonic() < deadline, cli.communicate()[0]
            time.sleep(0.05)
        cli.send_signal(signal.SIGSTOP)  # alive, holding claims on documents it has not computed
        stopped_with = len(committed.refresh())
        assert stopped_with < 20
        yield cli, stopped_with
    finally:
        cli.kill()
        cli.wait()


def _until_more_committed(out: Path, than: int, running: Callable[[], bool]) -> None:
    """Wait until the other writer committed something while the CLI writer is stopped (and is still running:
    it cannot finish, the stopped writer holds some of its documents)."""
    committed = CommittedKeys(open_backend(out))
    while len(committed.refresh()) <= than and running():
        time.sleep(0.1)
    assert running()


def _resume(cli: subprocess.Popen[str]) -> str:
    cli.send_signal(signal.SIGCONT)
    output, _ = cli.communicate(timeout=300)
    assert cli.returncode == 0, output
    return output


def _assert_union_once(out: Path, reference: Path, documents: int) -> None:
    info = open_cache(out).info()
    assert (info["documents"], info["duplicate_documents"]) == (documents, 0), info
    assert verify_cache(out).ok
    _assert_same_content(reference, out)


def test_a_pipeline_build_and_a_cli_build_compute_each_document_once(
        ray_cluster: object, tiny_llama_dir: Path, tmp_path: Path, corpora: tuple[list[str], Path, Path],
        reference: Path) -> None:
    pool, cli_corpus, ray_corpus = corpora
    out = tmp_path / "cache"
    result: dict[str, PipelineReport | BaseException] = {}

    def pipeline() -> None:
        try:
            result["report"] = build_distributed(settings_for(tiny_llama_dir, ray_corpus, out, unit_tokens=64,
                                                              **CAPTURE), stages=2, replicas=2)
        except BaseException as error:  # re-raised below, in the test's thread
            result["report"] = error

    with _stopped_cli_writer(tiny_llama_dir, cli_corpus, out) as (cli, stopped_with):
        thread = threading.Thread(target=pipeline)
        thread.start()
        _until_more_committed(out, stopped_with, thread.is_alive)
        output = _resume(cli)
        thread.join(timeout=300)
    report = result["report"]
    assert isinstance(report, PipelineReport), report
    # the CLI writer claimed all of its documents first; the pipeline computed the 16 only it has, and found the
    # 12 in common (minus those committed before it started) computed by the other writer
    assert "built 20 documents" in output and report.built_documents == 16, (output, report)
    assert report.by_other_writers >= 12 - stopped_with > 0
    _assert_union_once(out, reference, len(pool))


def test_a_service_job_and_a_cli_build_compute_each_document_once(
        tiny_llama_dir: Path, tmp_path: Path, corpora: tuple[list[str], Path, Path], reference: Path) -> None:
    pool, cli_corpus, job_corpus = corpora
    users = tmp_path / "users.yaml"
    token = add_user(users, "alice", ("submit", "read"))
    service = Service(tiny_llama_dir, tmp_path / "cache", users, tmp_path / "service.log",
                      extra=["--max-length", str(MAX_LENGTH)])
    try:
        with _stopped_cli_writer(tiny_llama_dir, cli_corpus, service.cache) as (cli, stopped_with):
            status, job = call(f"{service.url}/v1/jobs?name=overlap", token, job_corpus.read_bytes())
            assert status in (200, 201, 202), job

            def running() -> bool:
                return bool(call(f"{service.url}/v1/jobs/{job['id']}", token)[1]["state"] not in ("done", "failed"))

            _until_more_committed(service.cache, stopped_with, running)
            output = _resume(cli)
            record = wait_done(service.url, token, job["id"], timeout=300)
    finally:
        service.kill()
    # the job computed what only it has; what the CLI writer holds it waited for
    assert "built 20 documents" in output and record["computed_documents"] == 16, (output, record)
    _assert_union_once(service.cache, reference, len(pool))


def _assert_same_content(expected: Path, actual: Path) -> None:
    """The same token ids and bit-identical activations for every document (labels name each writer's corpus
    file, so they differ)."""
    a, b = open_cache(expected), open_cache(actual)
    assert sorted(d.key for d in a.documents()) == sorted(d.key for d in b.documents())
    for doc in a.documents():
        np.testing.assert_array_equal(a.token_ids(doc.key), b.token_ids(doc.key))
        for hook in a.hooks:
            for layer in a.layers:
                np.testing.assert_array_equal(a.activations(hook, layer, doc.key), b.activations(hook, layer, doc.key))
