"""The service on a cache in S3 (a real S3 server on 127.0.0.1): jobs, their records and their results live there."""

from __future__ import annotations

import json
from pathlib import Path

from actcache.cluster.service.job_store import jobs_folder
from actcache.cluster.service.users import add_user
from actcache.storage import open_cache, verify_cache
from actcache.storage.backends import open_backend
from s3_server import S3Server
from service_helpers import Service, call, jsonl, wait_done


def test_a_job_on_an_s3_cache_is_readable_from_s3_and_a_resubmission_costs_nothing(
        tiny_llama_dir: Path, tmp_path: Path, s3_url: str, s3_server: S3Server) -> None:
    users = tmp_path / "users.yaml"
    token = add_user(users, "alice", ("submit", "read"))
    cache = f"{s3_url}/lab/cache"
    service = Service(tiny_llama_dir, cache, users, tmp_path / "service.log", env=s3_server.env())  # type: ignore[arg-type]
    try:
        body = jsonl([f"a short story about the sea, number {i}." for i in range(12)])
        first = call(f"{service.url}/v1/jobs?name=sea", token, body)[1]
        done = wait_done(service.url, token, first["id"])
        assert (done["state"], done["computed_documents"], done["reused_documents"]) == ("done", 12, 0)
        again = wait_done(service.url, token, call(f"{service.url}/v1/jobs?name=again", token, body)[1]["id"])
        assert (again["computed_documents"], again["reused_documents"]) == (0, 12)
    finally:
        service.kill()
    reader = open_cache(cache)
    assert reader.n_documents == 12 and verify_cache(cache).ok
    assert all(d.meta["job"] == [first["id"], again["id"]] for d in reader.documents())  # every sender
    record = json.loads(open_backend(jobs_folder(cache)).get(f"{first['id']}.json"))
    assert record["state"] == "done"
