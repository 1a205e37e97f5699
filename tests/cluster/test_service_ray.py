"""`actcache serve --stages 2 --address RAY`: the resident model is a Ray pipeline; a stage SIGKILLed mid-job is
restarted by Ray and the job finishes with every document committed exactly once."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

from actcache.cluster.service.users import add_user
from actcache.storage import open_cache, verify_cache
from cluster_helpers import committed_documents
from service_helpers import SENTIMENT, Service, call, wait_done


def _stage_pids(log: Path) -> list[int]:
    """The stage processes the service names on stderr, in stage order."""
    return [int(pid) for pid in re.findall(r"stage \d+: .* pid (\d+)", log.read_text())]


def test_a_stage_killed_mid_job_is_restarted_and_the_job_finishes(ray_cluster: object, tiny_llama_dir: Path,
                                                                   tmp_path: Path) -> None:
    users = tmp_path / "users.yaml"
    token = add_user(users, "alice", ("submit", "read"))
    service = Service(tiny_llama_dir, tmp_path / "cache", users, tmp_path / "service.log",
                      extra=["--stages", "2", "--address", ray_cluster.address],  # type: ignore[attr-defined]
                      env={"RAY_TMPDIR": os.environ["RAY_TMPDIR"]})
    try:
        stages = _stage_pids(service.log)
        assert len(stages) == 2, service.log.read_text()
        lines = SENTIMENT.read_text().splitlines(keepends=True)[:60]
        status, job = call(f"{service.url}/v1/jobs?name=ray", token, "".join(lines).encode())
        assert status == 201, job
        deadline = time.monotonic() + 120
        while (record := call(f"{service.url}/v1/jobs/{job['id']}", token)[1])["progress"]["documents_done"] < 4:
            assert time.monotonic() < deadline and record["state"] != "done", record
            time.sleep(0.05)
        assert record["progress"]["documents_done"] < 60
        os.kill(stages[-1], signal.SIGKILL)  # mid-job: later units are still to run
        done = wait_done(service.url, token, job["id"], timeout=300)
    finally:
        service.kill()
    assert (done["computed_documents"], done["reused_documents"]) == (60, 0)
    keys = committed_documents(tmp_path / "cache")
    assert len(keys) == len(set(keys)) == 60, "a document was lost or committed twice"
    assert verify_cache(tmp_path / "cache").ok
    cache = open_cache(tmp_path / "cache")
    assert sorted(d.meta["index"] for d in cache.documents()) == list(range(1, 61))
    assert {d.meta["job"] for d in cache.documents()} == {job["id"]}
    assert "redone after a stage restart" in service.log.read_text()  # the job went on through a new stage
