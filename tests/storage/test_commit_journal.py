"""The commit journal: readers complete a manifest from the markers after its `listed_at`, never missing a record
that a listing of every commit would show, and caches without a journal still open (storage/commit_journal.py)."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from actcache import actcache_cli
from actcache.storage import CacheWriter, DocRecord, commit_journal, open_cache
from actcache.storage.backends import open_backend
from actcache.storage.backends.local import LocalBackend
from actcache.storage.cache_copy import copy_cache
from actcache.storage.catalog import list_caches
from actcache.storage.commit_journal import MARGIN_S, PRUNE_AFTER_S, marker_key, publish_commit, recent_units
from actcache.storage.commit_log import CommitLog
from actcache.storage.errors import CacheError
from actcache.storage.index import CommitRecord
from actcache.storage.records import ArrayManifest
from actcache.storage.snapshot_manifest import encode_manifest
from actcache.storage.snapshots import SnapshotLog
from storage_fixtures import WrittenCache, make_fingerprint, write_unit


@pytest.fixture(params=["disk", "s3"])
def cache_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    root = request.getfixturevalue("s3_url") if request.param == "s3" else str(tmp_path)
    return f"{root}/cache"


def _folded_cache(url: str, units: tuple[str, ...] = ("unit-a", "unit-b")) -> WrittenCache:
    out = WrittenCache(Path(url), [], {}, {})
    rng = np.random.default_rng(1)
    with CacheWriter.open(url, make_fingerprint()) as writer:
        for unit in units:
            write_unit(writer, unit, [4, 9], rng, out)
    return out  # closing the writer folded its commits


def _record(unit_id: str) -> CommitRecord:
    """A commit record without a segment (opening reads records only)."""
    arrays = {"resid_post/layer_1": ArrayManifest("resid_post/layer_1", (3, 16), 512, 1)}
    return CommitRecord(unit_id, f"{unit_id}-seg", make_fingerprint().digest, (DocRecord(f"{unit_id}-doc", 3, {}),),
                        arrays, time.time())


def _units(url: str) -> set[str]:
    return {r.unit_id for r in open_cache(url).commit_records()}


def test_commits_after_the_manifest_are_read_from_the_journal_tail(cache_url: str) -> None:
    _folded_cache(cache_url)
    reader = open_cache(cache_url)
    with CacheWriter.open(cache_url, make_fingerprint()) as writer:
        write_unit(writer, "unit-c", [7], np.random.default_rng(2), WrittenCache(Path(cache_url), [], {}, {}))
        state = SnapshotLog(open_backend(cache_url)).current()  # before this writer folds on close
    assert (state.journaled, state.unfolded) == (True, 1) and state.records[-1].unit_id == "unit-c"
    backend = open_backend(cache_url)
    marked = [key.rpartition("-")[0] for key in backend.list_prefix("journal/")]
    assert sorted(key.partition("Z-")[2] for key in backend.list_prefix("journal/")) == ["unit-a", "unit-b", "unit-c"]
    assert marked == sorted(marked) and len(marked) == 3  # one marker per commit, in time order
    assert {d.key for d in reader.documents()} == {f"unit-{u}-doc{i}" for u in "ab" for i in range(2)}
    reader.refresh()  # a reader opened before the commit sees it after refresh
    assert "unit-c-doc0" in {d.key for d in reader.documents()}
    assert _units(cache_url) == {"unit-a", "unit-b", "unit-c"}


def test_a_marker_without_its_record_is_ignored(cache_url: str) -> None:
    _folded_cache(cache_url)
    backend = open_backend(cache_url)
    assert backend.put_if_absent(marker_key(time.time(), "died-before-its-record"), b"")
    state = SnapshotLog(backend).current()
    assert state.journaled and state.unfolded == 0
    assert _units(cache_url) == {"unit-a", "unit-b"}


def test_a_commit_marked_before_the_fold_but_within_the_margin_is_found(cache_url: str) -> None:
    """A writer marked, then published its record after a fold began listing: the reader's window starts MARGIN_S
    before `listed_at`, so the record is read; a marker older than the window is not even listed."""
    _folded_cache(cache_url)
    backend = open_backend(cache_url)
    listed_at = SnapshotLog(backend).current().listed_at
    assert listed_at is not None
    slow, stale = _record("slow-writer"), _record("stale")
    backend.put_if_absent(marker_key(listed_at - MARGIN_S / 2, slow.unit_id), b"")
    backend.put_if_absent(marker_key(listed_at - 2 * MARGIN_S, stale.unit_id), b"")
    log = CommitLog(backend, "commits")
    for record in (slow, stale):
        assert log.put_if_absent(f"{record.unit_id}.json", record.to_dict())
    assert "stale" not in recent_units(backend, listed_at)
    assert "slow-writer" in _units(cache_url)


def test_a_cache_without_a_journal_opens_through_the_full_listing(cache_url: str) -> None:
    """Records and a manifest from before the journal (no markers, no `listed_at`): every record is still read;
    the next fold records `listed_at`, and readers use the journal from then on."""
    backend = open_backend(cache_url)
    CacheWriter.open(cache_url, make_fingerprint()).close()
    log = CommitLog(backend, "commits")
    old = [_record(f"old-{i}") for i in range(3)]
    for record in old[:2]:
        assert log.put_if_absent(f"{record.unit_id}.json", record.to_dict())
    index = SnapshotLog(backend).current().index
    fields = {"format_version": 1, "sequence": 1, "created": time.time(), "annotation_version": 0}
    backend.put("snapshots/00000001.safetensors", encode_manifest(fields, index.records, index.columns))
    assert log.put_if_absent(f"{old[2].unit_id}.json", old[2].to_dict())
    state = SnapshotLog(backend).current()
    assert (state.sequence, state.journaled, state.unfolded) == (1, False, 1)
    assert backend.list_prefix("journal/") == [] and _units(cache_url) == {"old-0", "old-1", "old-2"}
    assert actcache_cli.main(["compact", cache_url]) == 0  # nothing new, but the manifest lacks `listed_at`
    assert publish_commit(backend, _record("new"))
    state = SnapshotLog(backend).current()
    assert (state.sequence, state.journaled, state.unfolded) == (2, True, 1)
    assert _units(cache_url) == {"old-0", "old-1", "old-2", "new"}


def test_cp_marks_every_commit_it_publishes(written_cache: WrittenCache, s3_url: str) -> None:
    dst = f"{s3_url}/copy"
    copy_cache(str(written_cache.path), dst)
    backend = open_backend(dst)
    assert sorted(key.partition("Z-")[2] for key in backend.list_prefix("journal/")) == ["unit-a", "unit-b"]
    assert publish_commit(backend, _record("after-copy"))
    assert _units(dst) == {"unit-a", "unit-b", "after-copy"}


def test_compact_deletes_only_markers_older_than_twice_the_margin(cache_url: str) -> None:
    _folded_cache(cache_url)
    backend = open_backend(cache_url)
    log = SnapshotLog(backend)
    listed_at = log.current().listed_at
    assert listed_at is not None
    old, kept = marker_key(listed_at - PRUNE_AFTER_S - 60, "old"), marker_key(listed_at - PRUNE_AFTER_S + 60, "kept")
    for key in (old, kept):
        backend.put(key, b"")
    recent = backend.list_prefix("journal/")
    assert actcache_cli.main(["compact", cache_url]) == 0
    assert old not in backend.list_prefix("journal/")
    assert set(backend.list_prefix("journal/")) == set(recent) - {old}
    assert _units(cache_url) == {"unit-a", "unit-b"}


def test_ls_counts_the_commits_after_the_manifest(cache_url: str) -> None:
    """`actcache ls` opens each cache through its parent's backend (a subfolder view): the same journal tail."""
    _folded_cache(cache_url)
    assert publish_commit(open_backend(cache_url), _record("after-manifest"))
    (entry,) = list_caches(cache_url.rpartition("/")[0])
    assert (entry["name"], entry["units"], entry["documents"]) == ("cache", 3, 5)


class _StallingDisk(LocalBackend):
    """A disk whose first exclusive put under `folder` stalls `stall_s` (a writer paused mid-commit: the marker's
    name is chosen before the stall, as a real writer's would be)."""

    def __init__(self, root: Path, folder: str, stall_s: float) -> None:
        super().__init__(root)
        self.folder, self.stall_s = folder, stall_s

    def put_if_absent(self, key: str, data: bytes) -> bool:
        if key.startswith(self.folder) and self.stall_s:
            time.sleep(self.stall_s)
            self.stall_s = 0.0
        return super().put_if_absent(key, data)


@pytest.mark.parametrize("stalled", ["journal/", "commits/"])
def test_a_stalled_commit_is_marked_again(tmp_path: Path, stalled: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A marker that took longer than REMARK_AFTER_S is written again before the record; a record whose PUT did
    gets a marker after it. Either way the newest marker is no older than the record."""
    monkeypatch.setattr(commit_journal, "REMARK_AFTER_S", 0.2)
    backend = _StallingDisk(tmp_path, stalled, 0.5)
    assert publish_commit(backend, _record("stalled"))
    markers = backend.list_prefix("journal/")
    assert len(markers) == 2 and all(key.endswith("-stalled") for key in markers)
    first, second = (datetime.strptime(key[len("journal/"):].partition("Z-")[0], "%Y%m%dT%H%M%S.%f")
                     .replace(tzinfo=UTC).timestamp() for key in markers)
    written = os.stat(tmp_path / "commits" / "stalled.json").st_mtime
    if stalled == "journal/":  # the first marker is dated before the stall, the second after it
        assert second - first >= 0.5
    else:  # the second marker is dated after the record was written (a file's time never runs ahead of the clock)
        assert first + 0.4 <= written <= second  # (0.4: the stall, less a coarse file clock)


def test_a_store_too_slow_for_any_marker_publishes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commit_journal, "REMARK_AFTER_S", -1.0)
    with pytest.raises(CacheError, match="journal marker of unit slow.*not published"):
        publish_commit(LocalBackend(tmp_path), _record("slow"))
    assert LocalBackend(tmp_path).list_prefix("commits/") == []
