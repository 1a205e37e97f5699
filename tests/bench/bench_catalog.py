"""Benchmark: `actcache ls` of a lab's caches on disk and on a local S3 server (goal: about a second for 50).

    .venv/bin/python tests/bench/bench_catalog.py [--caches 50] [--units 4] [--repeats 5]

Writes `--caches` small caches (`--units` units each, random rows through CacheWriter, folded at close, plus one
unit committed after the fold so every cache also has an unfolded record to read) under `team-<k>/cache-<i>`
of a temp folder, uploads them with `actcache cp` to a bucket of moto's server on 127.0.0.1 (tests/s3_server.py),
then times `list_caches`
(what `actcache ls ROOT` runs): median and max of `--repeats` runs. Requests per cache: one GET of zarr.json, a
listing of snapshots/, one GET of the manifest, a listing of commits/, a GET per unfolded record, a listing of
tags/ (plus one delimiter listing per folder above the caches).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "storage"))


def _write_caches(root: str, caches: int, units: int) -> None:
    from actcache.storage import CacheWriter
    from storage_fixtures import WrittenCache, make_fingerprint, write_unit

    rng = np.random.default_rng(0)
    for i, name in enumerate(_names(caches)):
        out = WrittenCache(Path(name), [], {}, {})
        with CacheWriter.open(f"{root}/{name}", make_fingerprint(), {"name": "bench"}) as writer:
            for u in range(units):
                write_unit(writer, f"c{i}-u{u}", [20, 30], rng, out)
        late = CacheWriter.open(f"{root}/{name}", make_fingerprint())  # not closed: its record stays unfolded
        write_unit(late, f"c{i}-late", [10], rng, out)


def _names(caches: int) -> list[str]:
    return [f"team-{i % 5}/cache-{i:02d}" for i in range(caches)]


def _upload_keeping_the_unfolded_record(src: str, dst: str) -> None:
    """`cp` folds its copy; drop that manifest and put back the source's, which lacks the last record."""
    from actcache.storage.backends import open_backend
    from actcache.storage.cache_copy import copy_cache

    copy_cache(src, dst)
    source, target = open_backend(src), open_backend(dst)
    target.delete_prefix("snapshots/")
    for key in source.list_prefix("snapshots/"):
        target.put(key, source.get(key))


def _requests(caches: int) -> int:
    """Requests of one `ls` of this layout: a zarr.json probe per folder (root, 5 teams, the caches), a delimiter
    listing per folder that is not a cache, and 5 per cache (list snapshots/, the manifest, list commits/, the
    unfolded record, list tags/)."""
    return (1 + 5 + caches) + (1 + 5) + 5 * caches


def _time_gets(root: str, requests: int, repeats: int) -> tuple[float, float]:
    from concurrent.futures import ThreadPoolExecutor

    from actcache.storage.backends import open_backend

    backend = open_backend(root)
    key = f"{_names(1)[0]}/zarr.json"
    times = []
    with ThreadPoolExecutor(16) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(lambda _: backend.get(key), range(requests)))
            times.append(time.perf_counter() - start)
    return statistics.median(times), max(times)


def _time_ls(root: str, caches: int, repeats: int) -> tuple[float, float]:
    from actcache.storage.catalog import list_caches

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        found = list_caches(root)
        times.append(time.perf_counter() - start)
        assert len(found) == caches and all(e["bytes"] for e in found), found[:1]
    return statistics.median(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--caches", type=int, default=50)
    parser.add_argument("--units", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from s3_server import running_s3_server

    with running_s3_server() as server, tempfile.TemporaryDirectory(prefix="bench-ls-") as scratch:
        os.environ.update(server.env())
        server.create_bucket("lab")
        rows = {"disk": scratch, "S3 (moto, 127.0.0.1)": "s3://lab/caches"}
        _write_caches(scratch, args.caches, args.units)
        for name in _names(args.caches):  # uploaded by `actcache cp` (its unfolded record stays unfolded)
            _upload_keeping_the_unfolded_record(f"{scratch}/{name}", f"s3://lab/caches/{name}")
        print(f"{args.caches} caches x {args.units + 1} units (one unfolded), under 5 team folders")
        print(f"{'where':<22}{'ls median s':>13}{'max s':>8}")
        for name, root in rows.items():
            median, worst = _time_ls(root, args.caches, args.repeats)
            print(f"{name:<22}{median:>13.3f}{worst:>8.3f}")
        median, worst = _time_gets("s3://lab/caches", _requests(args.caches), args.repeats)
        print(f"{'S3, plain GETs':<22}{median:>13.3f}{worst:>8.3f}   ({_requests(args.caches)} GETs of one small "
              "object on 16 threads: as many requests as that ls, the server's floor)")


if __name__ == "__main__":
    main()
