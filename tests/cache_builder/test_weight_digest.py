"""Model identity covers every byte of every weight file; digests are computed once per file version."""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from actcache.actcache_cli import main
from actcache.cache_builder import weight_digest
from actcache.cache_builder.model_source import ResolvedModel, model_fingerprint, weight_files
from actcache.cache_builder.weight_digest import DIGEST_CACHE, file_digests
from actcache.storage import open_cache

HOUR_NS = 3600 * 10**9


def _nudge_tensor_at(shard: Path, fraction: float, delta: float = 1e-3) -> str:
    """Add `delta` to the float32 element at `fraction` of the file, in place (same size, the mtime moves on as
    with any write): what an editor of a checkpoint (ROME, a merged LoRA) saving in place does. Returns its name."""
    with open(shard, "r+b") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(header_len))
        target = int(os.path.getsize(shard) * fraction)
        for name, info in header.items():
            begin, end = (8 + header_len + x for x in info.get("data_offsets", (0, 0)))
            if begin <= target < end and info["dtype"] == "F32":
                offset = begin + (target - begin) // 4 * 4
                f.seek(offset)
                value = np.frombuffer(f.read(4), dtype="<f4") + np.float32(delta)
                f.seek(offset)
                f.write(value.astype("<f4").tobytes())
                return str(name)
    raise AssertionError(f"no float32 tensor at {fraction:.0%} of {shard}")


def _set_mtime(path: Path, mtime_ns: int) -> None:
    os.utime(path, ns=(path.stat().st_atime_ns, mtime_ns))


def test_edited_tensor_refuses_the_append(smollm2_dir: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """One weight of a 160 MB shard moved by 1e-3, saved in place: the append names that file and writes nothing."""
    model = tmp_path / "model"
    model.mkdir()
    for item in smollm2_dir.iterdir():
        (model / item.name).symlink_to(item)
    shard = model / Path(weight_files(ResolvedModel(smollm2_dir))[0]).name
    shard.unlink()
    shutil.copy2(smollm2_dir / shard.name, shard)  # the one file this test edits: a real copy
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"text": "The capital of France is Paris."}) + "\n")
    out = tmp_path / "cache"
    build = ["build", "--model", str(model), "--corpus", str(corpus), "--out", str(out), "--layers", "0",
             "--hooks", "resid_post", "--no-progress"]
    assert main(build) == 0
    capsys.readouterr()

    _nudge_tensor_at(shard, 0.4)  # in the middle of the shard, far from its header
    corpus.write_text(corpus.read_text() + json.dumps({"text": "The capital of Italy is Rome."}) + "\n")
    assert main(build) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"model.weights.{shard.name}.sha256 (cache: \"" in lines[0] and "build into a new --out" in lines[0]
    assert "null" not in lines[0]  # both digests shown, though the file name holds dots
    assert len(open_cache(out).documents()) == 1


def test_digest_cache_is_keyed_by_size_mtime_and_inode(tiny_llama_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A file is read again only when (size, mtime_ns, inode) change: shown by an edit that hides behind its old
    mtime (trusted, so the digest was not recomputed) and by a plain touch (hashed again)."""
    monkeypatch.setenv("ACTCACHE_HOME", str(tmp_path / "home"))
    model = Path(shutil.copytree(tiny_llama_dir, tmp_path / "model"))
    shards = [Path(p) for p in weight_files(ResolvedModel(model))]
    old = time.time_ns() - HOUR_NS  # settled files (a file written in the last seconds is not remembered)
    for shard in shards:
        _set_mtime(shard, old)
    first = model_fingerprint(ResolvedModel(model), "float32")
    remembered = json.loads((tmp_path / "home" / DIGEST_CACHE).read_text())
    assert sorted(remembered) == sorted(os.path.realpath(s) for s in shards)

    shard = shards[1]
    inode = shard.stat().st_ino
    _nudge_tensor_at(shard, 0.5)
    assert file_digests([shard], None)[shard] != first["weights"][shard.name]["sha256"]  # the bytes did change
    _set_mtime(shard, old)
    assert shard.stat().st_ino == inode
    assert model_fingerprint(ResolvedModel(model), "float32") == first  # same key: trusted, not reread

    _set_mtime(shard, old + 1)  # any change of the key (here 1 ns of mtime) means hashing again
    touched = model_fingerprint(ResolvedModel(model), "float32")
    assert [k for k in first["weights"] if first["weights"][k] != touched["weights"][k]] == [shard.name]


def test_every_byte_counts_whatever_the_block_and_thread_count(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Small blocks make a 10 kB file many blocks: a flip of any one byte (first, last, on and around block edges)
    changes the digest, and the digest does not depend on how many threads hashed it."""
    monkeypatch.setattr(weight_digest, "BLOCK", 1024)
    path = tmp_path / "weights.bin"
    data = np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    reference = file_digests([path], None)[path]
    for threads in (1, 3):
        monkeypatch.setattr(weight_digest, "_THREADS", threads)
        assert file_digests([path], None)[path] == reference
    seen = {reference}
    for position in (0, 1023, 1024, 5000, 9999):
        edited = bytearray(data)
        edited[position] ^= 0x01
        path.write_bytes(bytes(edited))
        seen.add(file_digests([path], None)[path])
    assert len(seen) == 6
