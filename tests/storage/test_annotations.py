"""Labels as a versioned layer: newest version wins, old versions stay readable, activations are never touched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from actcache.storage import CacheError, CorruptCacheError, open_cache, verify_cache
from actcache.storage.annotations import AnnotationLog, merge_metas, relabel
from actcache.storage.backends import open_backend
from actcache.storage.cli import format_info
from storage_fixtures import WrittenCache


def _tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (the activations and commit records must stay byte-identical)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_new_version_replaces_labels_and_old_versions_stay_readable(written_cache: WrittenCache) -> None:
    path = written_cache.path
    before = {name: _tree_digest(path / name) for name in ("segments", "commits")}
    first = relabel(path, {"unit-a-doc0": {"topic": "cooking"}, "unit-b-doc1": {"topic": "sports"},
                           "not-cached": {"topic": "x"}}, "v1.jsonl")
    assert (first.relabelled, first.version, first.not_cached) == (2, 1, 1)
    second = relabel(path, {"unit-a-doc0": {"topic": "baking"}}, "v2.jsonl")
    assert (second.relabelled, second.version) == (1, 2)

    newest = open_cache(path)
    assert newest.document("unit-a-doc0").meta == {"topic": "baking"}  # newest version wins
    assert newest.document("unit-b-doc1").meta == {"topic": "sports"}  # named only by version 1: kept
    assert newest.document("unit-a-doc1").meta == {"source": "unit-a.txt", "index": 1}  # never relabelled
    metas = {d.key: d.meta for d in newest.documents()}
    streamed = {d.key: d.meta for d, _ in newest.iter_activations("resid_post", 1)}
    assert metas["unit-a-doc0"] == streamed["unit-a-doc0"] == {"topic": "baking"}
    assert open_cache(path, annotations=1).document("unit-a-doc0").meta == {"topic": "cooking"}
    assert open_cache(path, annotations=0).document("unit-a-doc0").meta == {"source": "unit-a.txt", "index": 0}
    with pytest.raises(CacheError, match=r"annotation version 7 does not exist: this cache has versions \[0, 1, 2\]"):
        open_cache(path, annotations=7)

    # labelling never touches the activations or the commit records
    assert {name: _tree_digest(path / name) for name in ("segments", "commits")} == before
    assert verify_cache(path).ok
    for (hook, layer, key), rows in written_cache.values.items():
        np.testing.assert_array_equal(newest.activations(hook, layer, key), rows)

    info = newest.info()
    assert [(v["version"], v["source"], v["documents"]) for v in info["annotation_versions"]] == [
        (1, "v1.jsonl", 2), (2, "v2.jsonl", 1)]
    assert "labels v2" in format_info(info) and "1 document(s) relabelled from v2.jsonl" in format_info(info)


def test_the_same_labels_write_no_version(written_cache: WrittenCache) -> None:
    same = {"unit-a-doc0": {"source": "unit-a.txt", "index": 0}}
    result = relabel(written_cache.path, same, "again.jsonl")
    assert (result.relabelled, result.version) == (0, None)
    assert not AnnotationLog(open_backend(written_cache.path)).versions()


def test_versions_are_published_exclusively_and_half_written_files_are_ignored(written_cache: WrittenCache) -> None:
    path = written_cache.path
    relabel(path, {"unit-a-doc0": {"topic": "a"}}, "one")
    folder = path / "annotations"
    (folder / ".tmp-crashed.json").write_text('{"version": 9, "documents": {"unit-a-doc0"')  # a killed labeller
    log = AnnotationLog(open_backend(path))
    assert log.versions() == [1]
    # a concurrent labeller published version 2 between our listing and our link: we take 3, never overwrite
    log._log.put_if_absent("000002.json", {"version": 2, "created": 0.0, "source": "other",
                                           "documents": {"unit-b-doc0": {"topic": "b"}}})
    published = log.publish({"unit-a-doc1": {"topic": "c"}}, "ours")
    assert published.version == 3 and log.read(2).source == "other"
    assert open_cache(path).document("unit-b-doc0").meta == {"topic": "b"}


def test_the_layer_reads_with_plain_json(written_cache: WrittenCache) -> None:
    """docs/FORMAT.md's recipe: commit records give version 0, then each annotations/<version>.json in order."""
    path = written_cache.path
    relabel(path, {"unit-a-doc0": {"topic": "a"}, "unit-b-doc0": {"topic": "b"}}, "one")
    relabel(path, {"unit-a-doc0": {"topic": "z"}}, "two")
    labels = {}
    for record in sorted(path.glob("commits/*.json")):
        for doc in json.loads(record.read_text())["documents"]:
            labels.setdefault(doc["key"], doc["meta"])
    for version in sorted(path.glob("annotations/[0-9]*.json")):
        for key, meta in json.loads(version.read_text())["documents"].items():
            labels[key] = meta
    assert labels == {d.key: d.meta for d in open_cache(path).documents()}


def test_merge_keeps_every_label_of_a_repeated_text() -> None:
    merged = merge_metas([{"topic": "cooking", "split": "train", "index": 3},
                          {"topic": "sports", "split": "train", "index": 9, "pair": "p1"}])
    assert merged == {"topic": ["cooking", "sports"], "split": "train", "index": [3, 9], "pair": [None, "p1"]}
    assert merge_metas([{"topic": "cooking"}]) == {"topic": "cooking"}


def test_a_damaged_version_is_named(written_cache: WrittenCache) -> None:
    relabel(written_cache.path, {"unit-a-doc0": {"topic": "a"}}, "one")
    (written_cache.path / "annotations" / "000001.json").write_text('{"version": 1, "documents": ')
    with pytest.raises(CorruptCacheError, match=r"annotations/000001.json is not a valid annotation version"):
        open_cache(written_cache.path)
    assert open_cache(written_cache.path, annotations=0).document("unit-a-doc0").meta["index"] == 0


def test_verify_reports_every_damaged_version(written_cache: WrittenCache, capsys) -> None:
    """verify reads each annotation version, as a reader would, and lists every bad one with its fix."""
    from actcache.actcache_cli import main

    path = written_cache.path
    for n in range(3):
        relabel(path, {"unit-a-doc0": {"topic": f"t{n}"}}, f"v{n}.jsonl")
    assert verify_cache(path).ok
    folder = path / "annotations"
    (folder / "000001.json").write_text('{"version": 1, "documents": ')  # torn
    renamed = json.loads((folder / "000002.json").read_text())
    (folder / "000004.json").write_text(json.dumps(renamed))  # version 2's record under the name of version 4
    (folder / "notes.json").write_text("{}")
    problems = {p.where: p.message for p in verify_cache(path).problems}
    assert set(problems) == {"annotations/000001.json", "annotations/000004.json", "annotations/notes.json"}
    assert "not a valid annotation version" in problems["annotations/000001.json"]
    assert "relabel with `actcache label`" in problems["annotations/000001.json"]
    assert problems["annotations/000004.json"].startswith("holds version 2 under the name of version 4: restore")
    assert problems["annotations/notes.json"].startswith("not an annotation version")
    # the command line lists all three with every other problem (exit 1), the torn version included
    assert main(["verify", str(path), "--no-progress"]) == 1
    printed = capsys.readouterr().out
    assert printed.startswith("CORRUPT: 3 problem(s)") and "annotations/000004.json: holds version 2" in printed
    assert "annotations/000001.json" in printed and "not a valid annotation version" in printed
    assert "annotations/notes.json: not an annotation version" in printed
    (folder / "000001.json").unlink()  # a reader refuses the torn version; without it, the others read
    assert open_cache(path).document("unit-a-doc0").meta == {"topic": "t1"}  # 000004 holds version 2's labels
