"""Columnar snapshot manifests: a reader opened from one gives exactly what reading every commit record gives.

The reference here reads `commits/*.json` with plain json and indexes them the way docs/FORMAT.md says (commit order
by (created, unit_id), first commit of a key wins, rows counted within each unit), independently of the package.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from actcache import actcache_cli
from actcache.storage import CacheWriter, CorruptCacheError, DocRecord, open_cache
from actcache.storage.annotations import relabel
from actcache.storage.backends import open_backend
from actcache.storage.commit_journal import publish_commit
from actcache.storage.commit_log import CommitLog
from actcache.storage.index import CommitRecord
from actcache.storage.records import ArrayManifest
from actcache.storage.snapshots import SnapshotLog
from storage_fixtures import WrittenCache, make_fingerprint, write_unit


@pytest.fixture(params=["disk", "s3"])
def cache_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    root = request.getfixturevalue("s3_url") if request.param == "s3" else str(tmp_path)
    return f"{root}/cache"


def _reference(url: str) -> tuple[list[dict[str, Any]], dict[str, tuple[dict[str, Any], str, int, int]]]:
    """(records in commit order, key -> (document, segment, position, start)) from the commit records alone."""
    log = CommitLog(open_backend(url), "commits")
    records = sorted((log.get(name) for name in log.names()), key=lambda r: (r["created"], r["unit_id"]))
    docs: dict[str, tuple[dict[str, Any], str, int, int]] = {}
    for record in records:
        start = 0
        for position, doc in enumerate(record["documents"]):
            docs.setdefault(doc["key"], (doc, record["segment"], position, start))
            start += doc["n_tokens"]
    return records, docs


def _assert_reads_like_the_records(url: str, **open_args: Any) -> None:
    records, docs = _reference(url)
    reader = open_cache(url, **open_args)
    assert [r.to_dict() for r in reader.commit_records()] == records
    assert pickle.loads(pickle.dumps(reader.commit_records())) == reader.commit_records()  # to spawned workers
    listed = reader.documents()
    assert [d.key for d in listed] == list(docs)
    for document in listed:
        doc, segment, position, start = docs[document.key]
        assert document == reader.document(document.key)
        assert (document.meta, document.n_tokens) == (doc["meta"], doc["n_tokens"])
        assert document.original_tokens == doc.get("original_tokens", doc["n_tokens"])
        location = reader._index.docs[document.key]
        assert (location.segment, location.position, location.start) == (segment, position, start)
        assert location.record == DocRecord.from_dict(doc)
    assert reader.n_documents == len(docs)
    assert reader.n_tokens == sum(doc["n_tokens"] for doc, *_ in docs.values())
    with pytest.raises(KeyError, match="not committed"):
        reader.document("no-such-key")


def _commit_record_only(url: str, unit_id: str, docs: list[DocRecord], created: float) -> None:
    """A commit record without a segment (opening a cache reads records only), e.g. a key committed again."""
    arrays = {"resid_post/layer_1": ArrayManifest("resid_post/layer_1", (sum(d.n_tokens for d in docs), 16), 512, 1)}
    record = CommitRecord(unit_id, f"{unit_id}-seg", make_fingerprint().digest, tuple(docs), arrays, created)
    assert publish_commit(open_backend(url), record)  # as a writer does: a journal marker, then the record


def _build(url: str) -> WrittenCache:
    """Three units folded into a manifest, then two records it lacks: one committed again a key of unit-a (later:
    unit-a keeps it), one dated before everything (it wins the key of unit-b it shares), with a truncated document
    and labels of every JSON kind."""
    out = WrittenCache(Path(url), [], {}, {})
    rng = np.random.default_rng(4)
    with CacheWriter.open(url, make_fingerprint()) as writer:
        for name, lengths in (("unit-a", [5, 40, 1]), ("unit-b", [700, 9]), ("unit-c", [3])):
            write_unit(writer, name, lengths, rng, out)
    _commit_record_only(url, "unit-late", [DocRecord("unit-a-doc1", 40, {"again": True}),
                                           DocRecord("late-doc", 10, {"é": ["x", 1, None]}, 50)], 4e9)
    _commit_record_only(url, "unit-early", [DocRecord("unit-b-doc0", 700, {"first": 1.5}),
                                            DocRecord("early-doc", 2, {}, 2)], 1.0)
    return out


def test_a_manifest_plus_later_records_reads_like_every_record(cache_url: str) -> None:
    _build(cache_url)
    state = open_cache(cache_url).snapshot
    assert (state.sequence, state.unfolded) == (1, 2)
    _assert_reads_like_the_records(cache_url)
    assert SnapshotLog(open_backend(cache_url)).fold().sequence == 2  # now all from the columns
    assert open_cache(cache_url).snapshot.unfolded == 0
    _assert_reads_like_the_records(cache_url)


def test_a_tag_and_refresh_read_the_same_state_as_the_records(cache_url: str) -> None:
    _build(cache_url)
    relabel(cache_url, {"unit-c-doc0": {"topic": "pinned"}}, "v1.jsonl")
    SnapshotLog(open_backend(cache_url)).tag("v1")
    expected = [(d.key, d.meta) for d in open_cache(cache_url).documents()]
    reader = open_cache(cache_url)
    _commit_record_only(cache_url, "unit-after", [DocRecord("after-doc", 4, {"new": 1})], 5e9)
    relabel(cache_url, {"unit-c-doc0": {"topic": "moved"}}, "v2.jsonl")
    assert [(d.key, d.meta) for d in open_cache(cache_url, tag="v1").documents()] == expected
    assert [(d.key, d.meta) for d in reader.documents()] == expected  # its snapshot, until refresh
    reader.refresh()
    assert reader.documents()[-1].key == "after-doc" and reader.document("unit-c-doc0").meta == {"topic": "moved"}
    _assert_reads_like_the_records(cache_url, annotations=0)


def test_a_manifest_of_the_older_json_format_still_opens_and_compact_rewrites_it(cache_url: str) -> None:
    _build(cache_url)
    backend = open_backend(cache_url)
    backend.delete_prefix("snapshots/")
    log = CommitLog(backend, "commits")
    folded = {name: log.get(name) for name in log.names() if name != "unit-late.json"}
    old = {"format_version": 1, "sequence": 3, "created": 5e9, "annotation_version": 0, "commits": folded}
    backend.put("snapshots/00000003.json", json.dumps(old).encode())
    state = open_cache(cache_url).snapshot
    assert (state.sequence, state.unfolded) == (3, 1)
    _assert_reads_like_the_records(cache_url)
    assert actcache_cli.main(["compact", cache_url]) == 0
    assert [k for k in backend.list_prefix("snapshots/") if k.endswith(".safetensors")] == [
        "snapshots/00000004.safetensors"]
    _assert_reads_like_the_records(cache_url)


def test_the_manifest_is_plain_safetensors(tmp_path: Path) -> None:
    from safetensors import safe_open

    url = str(tmp_path / "cache")
    _build(url)
    SnapshotLog(open_backend(url)).fold()
    path = tmp_path / "cache" / "snapshots" / "00000002.safetensors"
    records, docs = _reference(url)
    with safe_open(str(path), framework="numpy") as manifest:  # what a reader without actcache does
        fields = json.loads(manifest.metadata()["actcache"])
        columns = {name: manifest.get_tensor(name) for name in manifest.keys()}  # noqa: SIM118 - not a dict
    assert (fields["sequence"], fields["annotation_version"]) == (2, 0)
    assert json.loads(columns["unit_ids"].tobytes()) == [r["unit_id"] for r in records]
    assert columns["created"].tolist() == [r["created"] for r in records]
    assert columns["unit_offsets"].tolist() == np.cumsum([0] + [len(r["documents"]) for r in records]).tolist()
    all_docs = [doc for r in records for doc in r["documents"]]
    assert json.loads(columns["keys"].tobytes()) == [d["key"] for d in all_docs]
    assert json.loads(columns["metas"].tobytes()) == [d["meta"] for d in all_docs]
    assert columns["n_tokens"].tolist() == [d["n_tokens"] for d in all_docs]
    assert columns["original_tokens"].tolist() == [d.get("original_tokens", -1) for d in all_docs]
    bounds, arrays = columns["array_offsets"].tolist(), columns["arrays"].tobytes()
    assert [json.loads(arrays[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)] == [
        r["arrays"] for r in records]
    assert len(docs) < len(all_docs)  # the manifest keeps every record's documents, repeats included


def test_a_damaged_manifest_is_refused_with_the_fix(tmp_path: Path) -> None:
    url = str(tmp_path / "cache")
    _build(url)
    manifest = tmp_path / "cache" / "snapshots" / "00000001.safetensors"
    manifest.write_bytes(manifest.read_bytes()[:200])
    with pytest.raises(CorruptCacheError, match=r"snapshots/00000001\.safetensors is not a valid manifest.*compact"):
        open_cache(url)
    manifest.unlink()
    _assert_reads_like_the_records(url)  # the records are the truth
