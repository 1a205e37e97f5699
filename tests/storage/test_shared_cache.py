"""A cache shared by a lab, on disk and on S3: writers started together on an empty location all succeed, and
readers never write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from actcache import actcache_cli
from actcache.storage import CacheWriter, open_cache, verify_cache
from actcache.storage.backends import open_backend
from storage_fixtures import WrittenCache, make_fingerprint, write_unit
from writer_race import start_writers_together

ROUNDS = 3


@pytest.fixture(params=["disk", "s3"])
def empty_root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return request.getfixturevalue("s3_url") if request.param == "s3" else str(tmp_path)


def test_writers_started_together_on_an_empty_location_all_succeed(empty_root: str) -> None:
    for round_ in range(ROUNDS):
        url = f"{empty_root}/race-{round_}"
        assert start_writers_together(url, [(1, 3)] * 3) == {0: "ok", 1: "ok", 2: "ok"}
        cache = open_cache(url)
        assert sorted(r.unit_id for r in cache.commit_records()) == ["unit-0", "unit-1", "unit-2"]
        assert verify_cache(url).ok


def test_a_writer_of_another_capture_racing_for_an_empty_location_is_refused(empty_root: str) -> None:
    url = f"{empty_root}/mixed"
    outcome = start_writers_together(url, [(1, 3), (1, 2)])
    assert list(outcome.values()).count("ok") == 1
    refused = next(message for message in outcome.values() if message != "ok")
    assert "layers" in refused and "build into a new --out" in refused
    assert len(open_cache(url).commit_records()) == 1


def test_readers_never_write(empty_root: str, tmp_path: Path, capsys) -> None:
    url = f"{empty_root}/cache"
    with CacheWriter.open(url, make_fingerprint()) as writer:
        for unit in ("a", "b"):
            write_unit(writer, unit, [40, 9], np.random.default_rng(0), WrittenCache(Path(url), [], {}, {}))
    backend = open_backend(url)
    before = backend.list_info("")
    cache = open_cache(url)
    for doc in cache.documents():
        cache.activations("resid_post", 1, doc.key)
    assert sum(len(batch["token_index"]) for batch in cache.tokens(batch_size=16)) == cache.n_tokens
    assert cache.info()["documents"] == 4 and verify_cache(url).ok
    for command in (["info", url], ["verify", url, "--no-progress"], ["stats", url, "--hooks", "resid_post"]):
        assert actcache_cli.main(command) == 0
    capsys.readouterr()
    assert backend.list_info("") == before  # not one object added, changed or touched
