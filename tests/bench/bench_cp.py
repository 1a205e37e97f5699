"""Benchmark: `actcache cp` against a plain copy of the same bytes, disk->disk, disk->S3 and S3->disk.

    .venv/bin/python tests/bench/bench_cp.py [--units 3] [--tokens 4096] [--layers 4] [--rounds 2]

The cache: `--units` units of `--tokens` tokens, resid_post of width 576 float32 at `--layers` layers (random
values, ~1 MiB chunks), written through CacheWriter. Plain copies: `shutil.copytree` of the cache folder
(disk->disk), obstore puts / gets of every object on 16 threads (disk->S3, S3->disk; the same thread count as
`cp`). `cp` also lists, checks every chunk's crc32c, fsyncs what it writes to a disk (a commit record never
names an object a power loss can take) and publishes and folds the commit records; for a disk destination the
plain copy is therefore also shown followed by an fsync of every file it wrote (`durable.fsync_tree`). Each round
runs the copies into fresh destinations, alternating; the best round of each is shown. S3 is moto's server on
127.0.0.1 (tests/s3_server.py): one Python process that bounds every client alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
THREADS = 16


def _write_cache(path: str, units: int, tokens: int, layers: int) -> None:
    from actcache.storage import CacheFingerprint, CacheWriter, CaptureSpec, DocRecord
    from actcache.storage.layout import activation_name

    fingerprint = CacheFingerprint(model={"architecture": "Bench", "config": {"hidden_size": 576}},
                                   tokenizer={"backend_sha256": "bench"}, dtype="float32",
                                   capture=CaptureSpec(("resid_post",), tuple(range(layers)), 4096),
                                   widths={"resid_post": 576})
    rng = np.random.default_rng(0)
    with CacheWriter.open(path, fingerprint) as writer:
        for u in range(units):
            docs = [DocRecord(f"u{u}-d{i}", tokens // 8, {"i": i}) for i in range(8)]
            segment = writer.begin_segment(f"{u:032d}", docs, rng.integers(0, 50000, tokens))
            rows = writer.segment_writer(segment)
            for layer in range(layers):
                rows.append(activation_name("resid_post", layer), rng.standard_normal((tokens, 576), np.float32))
            assert writer.commit(f"{u:032d}", segment, docs, rows.close())


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _obstore_put_tree(src: Path, bucket: str, prefix: str) -> None:
    import obstore
    from actcache.storage.backends.object_store import s3_store

    store = s3_store(bucket, prefix)
    files = [p for p in src.rglob("*") if p.is_file()]
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda p: obstore.put(store, p.relative_to(src).as_posix(), p.read_bytes()), files))


def _obstore_get_tree(bucket: str, prefix: str, dst: Path) -> None:
    import obstore
    from actcache.storage.backends.object_store import s3_store

    store = s3_store(bucket, prefix)
    keys = [m["path"] for batch in obstore.list(store) for m in batch]

    def fetch(key: str) -> None:
        target = dst / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(obstore.get(store, key).bytes().to_bytes())

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(fetch, keys))


def _timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from actcache.storage.cache_copy import copy_cache
    from actcache.storage.durable import fsync_tree
    from s3_server import running_s3_server

    with running_s3_server() as server, tempfile.TemporaryDirectory(prefix="bench-cp-") as scratch:
        os.environ.update(server.env())
        server.create_bucket("bench")
        root = Path(scratch)
        src = root / "src"
        _write_cache(str(src), args.units, args.tokens, args.layers)
        total = _tree_bytes(src)
        copy_cache(str(src), "s3://bench/source")  # the S3 source of the S3->disk rows
        best: dict[str, list[float]] = {}
        for r in range(args.rounds):
            runs = {
                "disk -> disk": (partial(copy_cache, str(src), str(root / f"cp{r}")),
                                 partial(shutil.copytree, src, root / f"tree{r}"), root / f"tree{r}"),
                "disk -> S3": (partial(copy_cache, str(src), f"s3://bench/cp{r}"),
                               partial(_obstore_put_tree, src, "bench", f"plain{r}"), None),
                "S3 -> disk": (partial(copy_cache, "s3://bench/source", str(root / f"back{r}")),
                               partial(_obstore_get_tree, "bench", "source", root / f"fetched{r}"),
                               root / f"fetched{r}"),
            }
            for name, (ours, plain, written) in runs.items():
                times = [_timed(ours), _timed(plain)]
                times.append(times[1] + _timed(partial(fsync_tree, written)) if written else float("nan"))
                best[name] = [min(a, b) for a, b in zip(best.get(name, times), times, strict=True)]
        print(f"cache: {args.units} units x {args.layers} layers x {args.tokens} tokens x 576 float32, "
              f"{total / 1e6:.1f} MB in {sum(1 for p in src.rglob('*') if p.is_file())} objects; best of "
              f"{args.rounds} rounds")
        print(f"{'copy':<14}{'cp s':>7}{'cp MB/s':>9}{'plain s':>9}{'plain MB/s':>12}{'cp x plain':>12}"
              f"{'plain+fsync s':>15}{'cp x plain+fsync':>18}")
        for name, (ours, plain, durable) in best.items():
            print(f"{name:<14}{ours:>7.2f}{total / ours / 1e6:>9.1f}{plain:>9.2f}{total / plain / 1e6:>12.1f}"
                  f"{plain / ours:>12.2f}{durable:>15.2f}{durable / ours:>18.2f}")


if __name__ == "__main__":
    main()
