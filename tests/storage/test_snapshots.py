"""Snapshot manifests and tags: opening reads one manifest; a tag reads exactly the state it pinned."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from actcache import actcache_cli
from actcache.storage import CacheError, CacheWriter, open_cache
from actcache.storage.annotations import relabel
from actcache.storage.backends import open_backend
from actcache.storage.snapshots import FOLD_EVERY, SnapshotLog
from storage_fixtures import WrittenCache, make_fingerprint, write_unit


def _writer_with_units(location: str | Path, units: int, rng: np.random.Generator, out: WrittenCache) -> CacheWriter:
    writer = CacheWriter.open(location, make_fingerprint())
    for i in range(units):
        write_unit(writer, f"unit-{len(out.docs):04d}-{i}", [3, 2], rng, out)
    return writer


def test_writers_fold_their_commits_so_a_reader_reads_one_manifest(tmp_path: Path) -> None:
    out = WrittenCache(tmp_path / "cache", [], {}, {})
    rng = np.random.default_rng(0)
    writer = _writer_with_units(out.path, FOLD_EVERY + 3, rng, out)
    open_state = open_cache(out.path).snapshot  # mid-build: folded every FOLD_EVERY commits
    assert (open_state.sequence, open_state.unfolded) == (1, 3)
    writer.close()  # a writer folds what it committed when it closes
    reader = open_cache(out.path)
    assert (reader.snapshot.sequence, reader.snapshot.unfolded) == (2, 0)
    assert [d.key for d in reader.documents()] == [d.key for d in out.docs]
    for doc in out.docs[::7]:
        np.testing.assert_array_equal(reader.activations("resid_post", 3, doc.key), out.values[("resid_post", 3,
                                                                                                 doc.key)])


def test_a_tag_reads_the_pinned_documents_and_labels_after_appends_and_relabels(written_cache: WrittenCache,
                                                                               capsys) -> None:
    path = written_cache.path
    relabel(path, {"unit-a-doc0": {"topic": "before"}}, "v1.jsonl")
    assert actcache_cli.main(["tag", str(path), "paper-v1"]) == 0
    assert "tagged" in capsys.readouterr().out
    with CacheWriter.open(path, make_fingerprint()) as writer:  # the cache grows and is relabelled afterwards
        write_unit(writer, "unit-c", [4], np.random.default_rng(1), WrittenCache(path, [], {}, {}))
    relabel(path, {"unit-a-doc0": {"topic": "after"}}, "v2.jsonl")

    pinned, newest = open_cache(path, tag="paper-v1"), open_cache(path)
    assert [d.key for d in pinned.documents()] == [d.key for d in written_cache.docs]
    assert newest.n_documents == pinned.n_documents + 1
    assert pinned.document("unit-a-doc0").meta == {"topic": "before"}
    assert newest.document("unit-a-doc0").meta == {"topic": "after"}
    assert actcache_cli.main(["info", str(path), "--json", "--tag", "paper-v1"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["documents"] == len(written_cache.docs) and info["snapshot"]["tag"] == "paper-v1"
    assert [t["name"] for t in info["tags"]] == ["paper-v1"]


def test_tags_never_move_and_unknown_tags_are_named(written_cache: WrittenCache, capsys) -> None:
    path = written_cache.path
    assert actcache_cli.main(["tag", str(path), "v1"]) == 0
    assert actcache_cli.main(["tag", str(path), "v1"]) == 2
    assert "tag 'v1' already exists" in capsys.readouterr().err
    with pytest.raises(CacheError, match=r"no tag 'v2' \(tags: v1\)"):
        open_cache(path, tag="v2")
    assert actcache_cli.main(["tag", str(path), "../escape"]) == 2


def test_compact_prunes_old_manifests_but_keeps_tagged_ones(tmp_path: Path) -> None:
    out = WrittenCache(tmp_path / "cache", [], {}, {})
    rng = np.random.default_rng(2)
    log = SnapshotLog(open_backend(out.path))
    for round_ in range(4):
        _writer_with_units(out.path, 2, rng, out).close()
        if round_ == 0:
            log.tag("first")
    assert log.sequences() == [1, 2, 3, 4]
    assert actcache_cli.main(["compact", str(out.path)]) == 0
    assert log.sequences() == [1, 3, 4]  # the tagged one and the newest two
    assert open_cache(out.path, tag="first").n_documents == 4
    assert open_cache(out.path).n_documents == 16


def test_a_reader_keeps_its_snapshot_until_refresh(written_cache: WrittenCache) -> None:
    reader = open_cache(written_cache.path)
    before = reader.n_documents
    with CacheWriter.open(written_cache.path, make_fingerprint()) as writer:
        write_unit(writer, "unit-late", [5], np.random.default_rng(3), WrittenCache(written_cache.path, [], {}, {}))
    assert reader.n_documents == len(reader.documents()) == before
    reader.refresh()
    assert reader.n_documents == before + 1
    assert reader.activations("resid_post", 1, "unit-late-doc0").shape == (5, 16)
