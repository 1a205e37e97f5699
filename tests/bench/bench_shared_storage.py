"""Benchmark: a cache on S3 (moto's server on 127.0.0.1) against the same cache on the local disk, side by side.

    .venv/bin/python tests/bench/bench_shared_storage.py [--model smollm2-135m] [--layers 8,15,22] [--units 10000]

- build: the demo corpus through the model into S3 and into a folder (model loaded once, same settings); ratio of
  throughputs (goal >= 0.9x: chunk uploads run on the writer's threads, beside the forward pass).
- sweep: `sweep_cache` of 8 variants (caa/pca/logistic/subspace x last/mean-skip:1) from each cache (goal >= 0.8x).
- open: open + list the documents of a cache of `--units` commit records (10 documents each), folded into a
  snapshot manifest, on each backend (goal < 1 s), and the same without the manifest (every record read alone).
  The records are written directly (the activation segments play no part in opening a cache).
The S3 server is a Python process on the same 2 cores, so S3 figures include its CPU time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "storage")]
os.environ.setdefault("ACTCACHE_HOME", str(REPO / ".cache" / "actcache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def timed(function, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def bench_build_and_sweep(model_name: str, layers: str, s3_root: str, disk_root: Path) -> None:
    from actcache.cache_builder.build import BuildSettings, build_cache
    from actcache.cache_builder.corpus import DEMO_CORPUS
    from actcache.cache_builder.model_source import load_model, resolve_model
    from actcache.solvers.sweep import SweepSettings, sweep_cache

    model = load_model(resolve_model(model_name), "float32", "cpu")
    rows = {}
    for name, out in (("disk", str(disk_root / "demo")), ("s3", f"{s3_root}/demo"),
                      ("disk again", str(disk_root / "demo2"))):
        settings = BuildSettings(model=model_name, corpus=DEMO_CORPUS, out=out, layers=layers, progress=False)
        seconds, report = timed(build_cache, settings, model)
        rows[name] = (seconds, report.built_tokens)
        print(f"build {name:<10} {seconds:6.1f} s  {report.built_tokens / seconds:8.0f} tok/s", flush=True)
    disk = min(rows["disk"][0], rows["disk again"][0])
    print(f"build S3 / disk throughput: {disk / rows['s3'][0]:.2f}x (goal >= 0.9x)\n", flush=True)
    sweeps = {}
    for name, cache in (("disk", str(disk_root / "demo")), ("s3", f"{s3_root}/demo")):
        settings = SweepSettings(methods=("caa", "pca", "logistic", "subspace"), poolings=("last", "mean-skip:1"))
        seconds, _ = timed(sweep_cache, cache, Path(tempfile.mkdtemp()) / "sweep", settings)
        sweeps[name] = seconds
        print(f"sweep {name:<10} {seconds:6.1f} s", flush=True)
    print(f"sweep S3 / disk throughput: {sweeps['disk'] / sweeps['s3']:.2f}x (goal >= 0.8x)\n", flush=True)


def bench_open(units: int, roots: dict[str, str]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from actcache.storage import CacheWriter, open_cache
    from actcache.storage.backends import open_backend
    from actcache.storage.commit_log import CommitLog
    from actcache.storage.index import CommitRecord
    from actcache.storage.records import ArrayManifest, DocRecord
    from actcache.storage.snapshots import SnapshotLog
    from storage_fixtures import make_fingerprint

    arrays = {f"resid_post/layer_{layer}": ArrayManifest(f"resid_post/layer_{layer}", (100, 16), 8192, 1)
              for layer in (1, 3)}

    def commit(log: CommitLog, unit: int) -> None:
        docs = tuple(DocRecord(uuid.uuid4().hex, 10, {"concept": f"c{unit % 12}", "split": "train"})
                     for _ in range(10))
        record = CommitRecord(f"unit-{unit:06d}", f"seg-{unit:06d}", "x", docs, arrays, time.time())
        log.put_if_absent(f"unit-{unit:06d}.json", record.to_dict())

    def open_and_list(url: str) -> float:
        seconds, reader = timed(open_cache, url)
        listed, documents = timed(reader.documents)
        assert len(documents) == 10 * units
        return seconds + listed

    for name, root in roots.items():
        url = f"{root}/open-{units}"
        CacheWriter.open(url, make_fingerprint()).close()
        log = CommitLog(open_backend(url), "commits")
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda unit, log=log: commit(log, unit), range(units)))
        print(f"open {name:<5} {units} units, no manifest:  {open_and_list(url):6.2f} s", flush=True)
        fold, _ = timed(SnapshotLog(open_backend(url)).fold)
        print(f"open {name:<5} {units} units, one manifest: {open_and_list(url):6.2f} s (goal < 1 s; the fold took "
              f"{fold:.1f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layers", default="8,15,22")
    parser.add_argument("--units", type=int, default=10_000)
    parser.add_argument("--skip-build", action="store_true", help="only the open benchmark")
    args = parser.parse_args()

    from s3_server import running_s3_server

    with running_s3_server() as server, tempfile.TemporaryDirectory() as scratch:
        os.environ.update(server.env())
        server.create_bucket("bench")
        if not args.skip_build:
            bench_build_and_sweep(args.model, args.layers, "s3://bench/build", Path(scratch))
        bench_open(args.units, {"disk": scratch, "s3": "s3://bench"})


if __name__ == "__main__":
    main()
