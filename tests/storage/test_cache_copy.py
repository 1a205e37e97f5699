"""`actcache cp`: copies between disk and S3 that are bit-identical, incremental, verified, and sliceable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from actcache.actcache_cli import main
from actcache.storage import CacheWriter, open_cache
from actcache.storage.backends import open_backend
from actcache.storage.cache_copy import copy_cache
from actcache.storage.errors import CorruptCacheError
from actcache.storage.fingerprint import CacheFingerprint
from actcache.storage.snapshots import SnapshotLog
from actcache.storage.verify import verify_cache
from storage_fixtures import WrittenCache, write_unit

REPO = Path(__file__).resolve().parents[2]
SENTIMENT = REPO / "tests" / "data" / "sentiment.jsonl"


def _assert_same_contents(url: str, cache: WrittenCache, keys: list[str] | None = None,
                          hooks: tuple[str, ...] = ("resid_post", "attn_z"), layers: tuple[int, ...] = (1, 3)) -> None:
    """Every wanted document's token ids and stored activations, bit for bit, and nothing else."""
    reader = open_cache(url)
    wanted = keys if keys is not None else [d.key for d in cache.docs]
    assert [d.key for d in reader.documents()] == wanted
    assert (reader.hooks, reader.layers) == (hooks, layers)
    for key in wanted:
        np.testing.assert_array_equal(reader.token_ids(key), cache.token_ids[key])
        for hook in hooks:
            for layer in layers:
                got = reader.tensor(hook, layer, key).numpy()
                assert got.tobytes() == cache.values[(hook, layer, key)].tobytes(), (hook, layer, key)
    assert verify_cache(url).ok


def test_disk_to_s3_to_disk_is_bit_identical_and_a_rerun_copies_nothing(
        written_cache: WrittenCache, s3_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bucket, back = f"{s3_url}/lab/copy", str(tmp_path / "back")
    assert main(["cp", str(written_cache.path), bucket, "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("copied 2 unit(s)")
    _assert_same_contents(bucket, written_cache)
    report = copy_cache(bucket, back)
    assert (report.units_copied, report.units_present) == (2, 0) and report.bytes > 0
    _assert_same_contents(back, written_cache)
    assert open_cache(back).info()["activation_bytes_stored"] == open_cache(str(written_cache.path)).info()[
        "activation_bytes_stored"]
    assert SnapshotLog(open_backend(back)).current().unfolded == 0  # folded at the end: opens from one manifest
    again = copy_cache(str(written_cache.path), bucket)
    assert (again.units_copied, again.units_present, again.objects) == (0, 2, 0)


def test_an_interrupted_copy_resumes_with_only_what_is_missing(written_cache: WrittenCache, s3_url: str) -> None:
    """A copy killed mid-unit leaves objects without a record: the rerun sends that unit's missing or damaged
    chunks (and its small metadata objects) only."""
    dst = f"{s3_url}/copy"
    full = copy_cache(str(written_cache.path), dst)
    backend = open_backend(dst)
    record = open_cache(dst).commit_records()[1]
    segment_keys = backend.list_prefix(f"segments/{record.segment}/")
    chunks = [k for k in segment_keys if "/c/" in k]
    lost, torn = chunks[::3], chunks[1]
    for key in [*lost, f"commits/{record.unit_id}.json"]:
        backend.delete(key)
    damaged = bytearray(backend.get(torn))
    damaged[5] ^= 1  # same size, wrong bytes: a write cut short by a power loss
    backend.put(torn, bytes(damaged))
    backend.delete_prefix("snapshots/")
    assert [r.unit_id for r in open_cache(dst).commit_records()] == [open_cache(dst).commit_records()[0].unit_id]
    resumed = copy_cache(str(written_cache.path), dst)
    metadata = len(segment_keys) - len(chunks)
    assert (resumed.units_copied, resumed.units_present, resumed.objects) == (1, 1, len(lost) + 1 + metadata)
    assert resumed.bytes < full.bytes / 2
    _assert_same_contents(dst, written_cache)


def test_a_corrupted_source_chunk_is_refused_naming_it_and_verify(written_cache: WrittenCache, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    record = open_cache(str(written_cache.path)).commit_records()[0]
    chunk = written_cache.path / "segments" / record.segment / "attn_z" / "layer_3" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x40
    chunk.write_bytes(bytes(data))
    dst = tmp_path / "copy"
    with pytest.raises(CorruptCacheError, match=r"segments/.*/attn_z/layer_3/c/0/0: crc32c checksum mismatch"):
        copy_cache(str(written_cache.path), str(dst))
    assert record.unit_id not in {r.unit_id for r in open_cache(dst).commit_records()}  # never published
    assert main(["cp", str(written_cache.path), str(tmp_path / "other"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "attn_z/layer_3/c/0/0" in err and "actcache verify" in err and len(err.splitlines()) == 1


def test_a_slice_and_a_document_selection_copy_only_those(written_cache: WrittenCache, tmp_path: Path) -> None:
    """--hooks/--layers keep those arrays; --where copies whole units as objects and rewrites partly matching
    ones with their matching documents, bit for bit."""
    src = str(written_cache.path)
    rng = np.random.default_rng(5)
    with CacheWriter.open(src, open_cache(src).fingerprint) as writer:
        write_unit(writer, "unit-c", [4, 50], rng, written_cache)
    sliced = copy_cache(src, str(tmp_path / "slice"), hooks="attn_z", layers="3", where={"index": "0"})
    first_docs = [d.key for d in written_cache.docs if d.meta["index"] == 0]
    assert (sliced.units_copied, sliced.units_rewritten) == (0, 3)
    _assert_same_contents(str(tmp_path / "slice"), written_cache, first_docs, hooks=("attn_z",), layers=(3,))
    whole = copy_cache(src, str(tmp_path / "unit-a"), where={"source": "unit-a.txt"})
    assert (whole.units_copied, whole.units_rewritten) == (1, 0)
    _assert_same_contents(str(tmp_path / "unit-a"), written_cache,
                          [d.key for d in written_cache.docs if d.key.startswith("unit-a")])
    again = copy_cache(src, str(tmp_path / "slice"), hooks="attn_z", layers="3", where={"index": "0"})
    assert (again.units_copied, again.units_rewritten, again.units_present) == (0, 0, 3)


def test_a_tag_copies_exactly_the_tagged_state(written_cache: WrittenCache, tmp_path: Path) -> None:
    src = str(written_cache.path)
    tagged = [d.key for d in written_cache.docs]
    SnapshotLog(open_backend(src)).tag("v1")
    with CacheWriter.open(src, open_cache(src).fingerprint) as writer:
        write_unit(writer, "unit-late", [6], np.random.default_rng(2), written_cache)
    copy_cache(src, str(tmp_path / "copy"), tag="v1")
    _assert_same_contents(str(tmp_path / "copy"), written_cache, tagged)


def test_a_destination_of_another_selection_is_refused_untouched(written_cache: WrittenCache, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / "copy"
    copy_cache(str(written_cache.path), str(dst), layers="1")
    before = sorted(p.relative_to(dst) for p in dst.rglob("*"))
    assert main(["cp", str(written_cache.path), str(dst), "--no-progress"]) == 2
    assert "capture.layers" in capsys.readouterr().err
    assert sorted(p.relative_to(dst) for p in dst.rglob("*")) == before


def test_a_layer_slice_appends_with_a_build_of_that_slice_and_solves(tiny_sentiment_cache: Path, tiny_llama_dir: Path,
                                                                     tmp_path: Path) -> None:
    """Copy layer -1 of resid_post of the train documents; a build of the same selection then appends the test
    documents to the copy (the fingerprints agree) and a solve reads it."""
    dst, source = tmp_path / "slim", open_cache(tiny_sentiment_cache)
    report = copy_cache(str(tiny_sentiment_cache), str(dst), hooks="resid_post", layers="-1",
                        where={"split": "train"})
    train = [d.key for d in source.documents() if d.meta["split"] == "train"]
    assert report.units_rewritten > 0 and [d.key for d in open_cache(dst).documents()] == train
    assert main(["build", "--model", str(tiny_llama_dir), "--corpus", str(SENTIMENT), "--out", str(dst),
                 "--hooks", "resid_post", "--layers", "-1", "--no-progress"]) == 0
    slim = open_cache(dst)
    assert slim.info()["duplicate_documents"] == 0
    assert {d.key for d in slim.documents()} == {d.key for d in source.documents()}
    assert CacheFingerprint.to_dict(slim.fingerprint)["capture"]["layers"] == [3]
    for key in train[:5]:  # copied: bit for bit
        assert slim.tensor("resid_post", 3, key).numpy().tobytes() == source.tensor(
            "resid_post", 3, key).numpy().tobytes()
    built = next(d.key for d in source.documents() if d.meta["split"] == "test")
    np.testing.assert_allclose(slim.activations("resid_post", 3, built), source.activations("resid_post", 3, built),
                               rtol=1e-5, atol=1e-5)
    out = tmp_path / "readout"
    assert main(["solve", "--cache", str(dst), "--out", str(out), "--layers", "-1", "--label-field", "sentiment",
                 "--positive", "positive", "--methods", "caa"]) == 0
    assert json.loads((out / "readout.json").read_text())["layers"] == [3]
