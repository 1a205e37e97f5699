"""Benchmark: the S3 clients zarr can use (obstore, s3fs) against a real local S3 server, disk alongside.

    .venv/bin/python tests/bench/bench_object_store.py [--small 100] [--listed 1000] [--big-mib 16] [--big 16]

Server: moto's server mode on 127.0.0.1 (tests/storage/s3_server.py), one process, objects in memory: it is the
bottleneck for large puts, so throughput rows compare clients, not S3. Rows, per client through its zarr store
(`zarr.storage.ObjectStore` over obstore, `FsspecStore` over s3fs, `LocalStore` on a temp folder for scale):
median latency of `--small` sequential 1 KiB sets and gets, median of 5 listings of `--listed` keys, median of
20 conditional creates (`put_if_absent` through our backends; s3fs's `pipe_file(mode="create")`), and MB/s of
`--big` objects of `--big-mib` MiB written then read 4 at a time. The s3fs row needs `pip install s3fs` (not a
dependency; it is skipped without it). docs/STORAGE-BACKENDS.md has the figures and the choice they support.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


async def _store_rows(store: Any, args: argparse.Namespace) -> dict[str, float]:
    from zarr.core.buffer import default_buffer_prototype

    proto = default_buffer_prototype()
    small = proto.buffer.from_bytes(os.urandom(1024))
    puts, gets, lists = [], [], []
    for i in range(args.small):
        start = time.perf_counter()
        await store.set(f"small/{i:05d}", small)
        puts.append(time.perf_counter() - start)
    for i in range(args.small):
        start = time.perf_counter()
        got = await store.get(f"small/{i:05d}", proto)
        gets.append(time.perf_counter() - start)
        assert got is not None and got.to_bytes() == small.to_bytes()
    await asyncio.gather(*[store.set(f"listed/{i:05d}", small) for i in range(args.listed)])
    for _ in range(5):
        start = time.perf_counter()
        keys = [key async for key in store.list_prefix("listed/")]
        lists.append(time.perf_counter() - start)
        assert len(keys) == args.listed
    big = proto.buffer.from_bytes(np.random.default_rng(0).bytes(args.big_mib << 20))
    gate = asyncio.Semaphore(4)

    async def put(i: int) -> None:
        async with gate:
            await store.set(f"big/{i}", big)

    async def get(i: int) -> int:
        async with gate:
            got = await store.get(f"big/{i}", proto)
            return len(got.to_bytes()) if got is not None else 0

    start = time.perf_counter()
    await asyncio.gather(*[put(i) for i in range(args.big)])
    put_s = time.perf_counter() - start
    start = time.perf_counter()
    sizes = await asyncio.gather(*[get(i) for i in range(args.big)])
    get_s = time.perf_counter() - start
    assert sizes == [args.big_mib << 20] * args.big
    megabytes = args.big * (args.big_mib << 20) / 1e6
    return {
        "put 1 KiB ms": _median_ms(puts),
        "get 1 KiB ms": _median_ms(gets),
        f"list {args.listed} ms": _median_ms(lists),
        "put MB/s": megabytes / put_s,
        "get MB/s": megabytes / get_s,
    }


def _create_ms(create: Callable[[str, bytes], bool]) -> float:
    samples = []
    for i in range(20):
        start = time.perf_counter()
        won = create(f"created/{i}", b"first")
        samples.append(time.perf_counter() - start)
        assert won and not create(f"created/{i}", b"second"), "a second create of the same key must lose"
    return _median_ms(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--listed", type=int, default=1000)
    parser.add_argument("--big-mib", type=int, default=16)
    parser.add_argument("--big", type=int, default=16)
    args = parser.parse_args()

    import zarr
    from actcache.storage.backends import open_backend
    from s3_server import running_s3_server

    rows: dict[str, dict[str, float]] = {}
    with running_s3_server() as server, tempfile.TemporaryDirectory() as scratch:
        os.environ.update(server.env())
        for bucket in ("bench-obstore", "bench-s3fs"):
            server.create_bucket(bucket)
        s3 = open_backend("s3://bench-obstore/cache")
        rows["obstore"] = asyncio.run(_store_rows(s3.zarr_store("zarr", read_only=False), args))
        rows["obstore"]["create ms"] = _create_ms(s3.put_if_absent)
        try:
            import s3fs
        except ImportError:
            print("s3fs is not installed: its row is skipped (pip install s3fs)")
        else:
            fs = s3fs.S3FileSystem(asynchronous=True, endpoint_url=server.endpoint)
            rows["s3fs"] = asyncio.run(_store_rows(zarr.storage.FsspecStore(fs, path="bench-s3fs/cache/zarr"), args))
            sync_fs = s3fs.S3FileSystem(endpoint_url=server.endpoint)

            def s3fs_create(key: str, data: bytes) -> bool:
                try:
                    sync_fs.pipe_file(f"bench-s3fs/cache/{key}", data, mode="create")
                except FileExistsError:
                    return False
                return True

            rows["s3fs"]["create ms"] = _create_ms(s3fs_create)
        local = open_backend(Path(scratch) / "cache")
        rows["local disk"] = asyncio.run(_store_rows(local.zarr_store(read_only=False), args))
        rows["local disk"]["create ms"] = _create_ms(local.put_if_absent)
    columns = list(rows["obstore"])
    print(f"{'client':12s}" + "".join(f"{column:>16s}" for column in columns))
    for name, row in rows.items():
        print(f"{name:12s}" + "".join(f"{row[column]:16.1f}" for column in columns))


if __name__ == "__main__":
    main()
