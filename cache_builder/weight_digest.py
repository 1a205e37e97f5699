"""Digests of every byte of a model's weight files, hashed in parallel and once per file version.

A model's identity must change when any weight changes (an edited tensor saved in place keeps the file size), so
each file is hashed whole. To use every core even for one large file, a file is cut into `BLOCK`-byte blocks that
threads hash independently (hashlib releases the GIL); the file digest is the sha256 of the concatenated block
digests (`METHOD`). sha256 was measured faster than blake2b here (OpenSSL's SHA-NI path; docs/FORMAT.md).

Digests are remembered in `<ACTCACHE_HOME>/weight_digests.json`, keyed by the file's real path and trusted while
its (size, mtime_ns, inode) are unchanged. Rewriting a file (in place or by rename) changes its mtime or inode, so
it is hashed again; a tool that rewrites bytes and then restores the old mtime with `os.utime` would not be seen.
As in git's "racy" rule, a file modified less than `_RACY_NS` before hashing began is not remembered: a second write
within the file system's timestamp granularity could otherwise keep the same mtime.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from actcache.storage.errors import InputError

__all__ = ["BLOCK", "DIGEST_CACHE", "METHOD", "file_digests"]

BLOCK = 64 << 20  # bytes per independently hashed block: parallel work inside one large file
_READ = 4 << 20  # bytes per read inside a block (bounds memory to one read per thread)
_THREADS = min(8, os.cpu_count() or 1)
_RACY_NS = 2_000_000_000  # files modified this recently before hashing are hashed again next time
METHOD = f"sha256 of the concatenated sha256 digests of each {BLOCK >> 20} MiB block (every byte of the file)"
DIGEST_CACHE = "weight_digests.json"


def file_digests(paths: Sequence[Path], cache_file: Path | None) -> dict[Path, str]:
    """`METHOD` digest of each file, hashing only those whose (size, mtime_ns, inode) differ from `cache_file`'s
    record (None: hash everything, remember nothing)."""
    stats = {p: _stat(p) for p in paths}
    known = _load(cache_file) if cache_file is not None else {}
    digests = {p: known[key]["sha256"] for p, (key, stat) in stats.items()
               if key in known and known[key].get("method") == METHOD and known[key].get("stat") == stat}
    todo = [p for p in paths if p not in digests]
    if todo:
        started_ns = time.time_ns()
        fresh = _hash_files(todo)
        for path in todo:
            if _stat(path) != stats[path]:
                raise InputError(f"weight file {path} changed while it was being hashed: rerun once it is written")
        digests.update(fresh)
        settled = [p for p in todo if stats[p][1][1] < started_ns - _RACY_NS]
        if cache_file is not None and settled:
            _remember(cache_file, {stats[p][0]: {"stat": stats[p][1], "method": METHOD, "sha256": fresh[p]}
                                   for p in settled})
    return digests


def _stat(path: Path) -> tuple[str, list[int]]:
    """(real path, [size, mtime_ns, inode]): the digest cache's key and what must not have changed."""
    st = os.stat(path)
    return os.path.realpath(path), [st.st_size, st.st_mtime_ns, st.st_ino]


def _hash_files(paths: Sequence[Path]) -> dict[Path, str]:
    """All blocks of all files on one thread pool (a few big files or many small ones use every thread)."""
    blocks = [(p, start) for p in paths for start in range(0, max(os.path.getsize(p), 1), BLOCK)]
    with ThreadPoolExecutor(_THREADS) as pool:
        block_digests = list(pool.map(lambda job: _hash_block(*job), blocks))
    per_file: dict[Path, Any] = {p: hashlib.sha256() for p in paths}
    for (path, _), block_digest in zip(blocks, block_digests, strict=True):
        per_file[path].update(block_digest)
    return {p: h.hexdigest() for p, h in per_file.items()}


def _hash_block(path: Path, start: int) -> bytes:
    sha = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        left = BLOCK
        while left > 0:
            data = f.read(min(_READ, left))
            if not data:
                break
            sha.update(data)
            left -= len(data)
    return sha.digest()


def _load(cache_file: Path) -> dict[str, dict[str, Any]]:
    """The remembered digests; a missing or unreadable file only means hashing again."""
    try:
        data = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remember(cache_file: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Merge into the file as it is now (another process may have added entries) and replace it atomically;
    entries of files that no longer exist are dropped. A lost race costs one rehash, never a wrong digest."""
    data = {k: v for k, v in _load(cache_file).items() if os.path.exists(k)} | entries
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(f".{cache_file.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, cache_file)
