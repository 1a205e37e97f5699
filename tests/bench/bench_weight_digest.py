"""Hashing every byte of SmolLM2-135M's weight files: cold (no digest cache) and warm, and sha256 vs blake2b.

    .venv/bin/python tests/bench/bench_weight_digest.py

The files are read once first, so the cold figure is hashing (CPU), not the disk. Prints seconds and GB/s for one
thread and for the default thread count, the warm (remembered) time, and the per-core rate of both hashes.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

from actcache.cache_builder import weight_digest
from actcache.cache_builder.model_source import resolve_model, weight_files
from actcache.cache_builder.weight_digest import file_digests

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("ACTCACHE_HOME", str(REPO / ".cache" / "actcache"))


def main() -> None:
    files = [Path(p) for p in weight_files(resolve_model("smollm2-135m"))]
    size = sum(p.stat().st_size for p in files)
    for path in files:
        path.read_bytes()  # into the page cache
    for threads in sorted({1, weight_digest._THREADS}):
        weight_digest._THREADS = threads
        started = time.perf_counter()
        file_digests(files, None)
        seconds = time.perf_counter() - started
        print(f"cold, {threads} thread(s): {seconds:.2f} s for {size / 1e6:.0f} MB ({size / seconds / 1e9:.2f} GB/s)")
    remembered = Path(tempfile.mkdtemp()) / weight_digest.DIGEST_CACHE
    file_digests(files, remembered)
    started = time.perf_counter()
    file_digests(files, remembered)
    print(f"warm (digest cache): {(time.perf_counter() - started) * 1e3:.1f} ms")
    block = os.urandom(64 << 20)
    for name in ("sha256", "blake2b"):
        rates = []
        for _ in range(3):
            digest = hashlib.new(name)
            started = time.perf_counter()
            for _ in range(4):
                digest.update(block)
            rates.append(4 * len(block) / (time.perf_counter() - started) / 1e9)
        print(f"{name}: {max(rates):.2f} GB/s per core (best of 3)")


if __name__ == "__main__":
    main()
