"""`verify` reads every chunk and names the documents a damaged chunk belongs to."""

from __future__ import annotations

import json

from actcache.storage import verify_cache
from storage_fixtures import WrittenCache


def _chunk_file(cache: WrittenCache, unit: str, name: str, index: int):
    commit = json.loads((cache.path / "commits" / f"{unit}.json").read_text())
    return cache.path / "segments" / commit["segment"] / name / "c" / str(index) / "0"


def test_intact_cache_verifies(written_cache: WrittenCache) -> None:
    report = verify_cache(written_cache.path)
    assert report.ok and report.units == 2 and report.documents == 6 and report.chunks > 4


def test_flipped_byte_is_caught_and_named(written_cache: WrittenCache) -> None:
    chunk = _chunk_file(written_cache, "unit-a", "resid_post/layer_3", 0)
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    report = verify_cache(written_cache.path)
    assert not report.ok
    [problem] = report.problems
    assert "resid_post/layer_3 chunk 0" in problem.where and "checksum" in problem.message
    # resid_post width 16 float32 -> 16384-row chunks: chunk 0 holds all of unit-a
    assert {d.split(" ")[0] for d in problem.documents} == {f"unit-a-doc{i}" for i in range(4)}


def test_missing_chunk_and_commit_damage_are_caught(written_cache: WrittenCache) -> None:
    _chunk_file(written_cache, "unit-b", "attn_z/layer_1", 0).unlink()
    (written_cache.path / "commits" / "unit-a.json").write_text("{not json")
    report = verify_cache(written_cache.path)
    messages = " | ".join(f"{p.where}: {p.message}" for p in report.problems)
    assert "chunk file missing" in messages and "unreadable commit record" in messages
