"""Benchmark: a cache on S3 (moto's server on 127.0.0.1) against the same cache on the local disk, side by side.

    .venv/bin/python tests/bench/bench_shared_storage.py [--model smollm2-135m] [--layers 8,15,22] [--units 10000]
        [--skip-build] [--repeats 3]      # --skip-build: only the open benchmark

- build: the demo corpus through the model into S3 and into a folder (model loaded once, same settings); ratio of
  throughputs (goal >= 0.9x: chunk uploads run on the writer's threads, beside the forward pass).
- sweep: `sweep_cache` of 8 variants (caa/pca/logistic/subspace x last/mean-skip:1) from each cache (goal >= 0.8x).
- open: open + list the documents of a cache of `--units` commit records (10 documents each), folded into a
  snapshot manifest, on each backend (goal < 1 s), and the same without the manifest (every record read alone);
  with the time of listing commits/ alone (1,000 names per request on S3; moto's server rescans the whole prefix
  for every page, so that listing grows with the square of the units there, unlike S3's), which a reader of a
  manifest no longer does: it lists the commit journal's tail (storage/commit_journal.py). Then again with 64
  (FOLD_EVERY) units committed after the manifest, the state readers meet while a build runs.
  The records are published directly, journal marker then record (the activation segments play no part in opening
  a cache), the first `--units` dated over the past day (a cache built earlier: their markers lie before the
  tail a reader lists), the 64 now. A cache whose units were all committed within the journal's margin (10 min)
  lists all their markers: as slow as listing commits/.
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


def bench_open(units: int, roots: dict[str, str], repeats: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from actcache.storage import CacheWriter, open_cache
    from actcache.storage.backends import StorageBackend, open_backend
    from actcache.storage.commit_journal import marker_key, publish_commit
    from actcache.storage.commit_log import CommitLog
    from actcache.storage.index import CommitRecord
    from actcache.storage.records import ArrayManifest, DocRecord
    from actcache.storage.snapshots import FOLD_EVERY, SnapshotLog
    from storage_fixtures import make_fingerprint

    arrays = {f"resid_post/layer_{layer}": ArrayManifest(f"resid_post/layer_{layer}", (100, 16), 8192, 1)
              for layer in (1, 3)}

    def commit(backend: StorageBackend, unit: int, history_s: float = 0.0) -> None:
        """Publish unit `unit` now, as a writer does; with `history_s`, as if committed that many seconds ago
        (record and journal marker dated then: a cache built over a day, its journal's tail since empty)."""
        docs = tuple(DocRecord(uuid.uuid4().hex, 10, {"concept": f"c{unit % 12}", "split": "train"})
                     for _ in range(10))
        when = time.time() - history_s
        record = CommitRecord(f"unit-{unit:06d}", f"seg-{unit:06d}", "x", docs, arrays, when)
        if not history_s:
            publish_commit(backend, record)
            return
        backend.put_if_absent(marker_key(when, record.unit_id), record.unit_id.encode())
        CommitLog(backend, "commits").put_if_absent(f"{record.unit_id}.json", record.to_dict())

    def open_and_list(url: str, units: int, repeats: int = 1) -> str:
        """The fastest of `repeats` opens (a fresh reader each time), split into its parts."""
        runs = []
        for _ in range(repeats):
            seconds, reader = timed(open_cache, url)
            listed, documents = timed(reader.documents)
            assert len(documents) == 10 * units
            listing, _ = timed(CommitLog(open_backend(url), "commits").names)
            runs.append((seconds + listed, seconds, listed, listing))
        total, seconds, listed, listing = min(runs)
        return (f"{total:6.2f} s (open {seconds:.2f} + documents() {listed:.2f}, {reader.snapshot.unfolded} records "
                f"after the manifest; listing commits/ alone {listing:.2f} s)")

    for name, root in roots.items():
        url = f"{root}/open-{units}"
        CacheWriter.open(url, make_fingerprint()).close()
        backend = open_backend(url)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda unit, backend=backend: commit(backend, unit, 86_400 * (1 - unit / units)),
                          range(units)))
        print(f"open {name:<5} {units} units, no manifest:  {open_and_list(url, units)}", flush=True)
        fold, _ = timed(SnapshotLog(open_backend(url)).fold)
        print(f"open {name:<5} {units} units, one manifest: {open_and_list(url, units, repeats)} (goal < 1 s, best "
              f"of {repeats}; the fold took {fold:.1f} s; load average {os.getloadavg()[0]:.1f})", flush=True)
        for unit in range(units, units + FOLD_EVERY):
            commit(backend, unit)
        print(f"open {name:<5} {units} units, manifest + {FOLD_EVERY}: "
              f"{open_and_list(url, units + FOLD_EVERY, repeats)} (goal < 1 s, best of {repeats}; load average "
              f"{os.getloadavg()[0]:.1f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layers", default="8,15,22")
    parser.add_argument("--units", type=int, default=10_000)
    parser.add_argument("--skip-build", action="store_true", help="only the open benchmark")
    parser.add_argument("--repeats", type=int, default=3, help="opens from the manifest timed (the best is shown)")
    args = parser.parse_args()

    from s3_server import running_s3_server

    with running_s3_server() as server, tempfile.TemporaryDirectory() as scratch:
        os.environ.update(server.env())
        server.create_bucket("bench")
        if not args.skip_build:
            bench_build_and_sweep(args.model, args.layers, "s3://bench/build", Path(scratch))
        bench_open(args.units, {"disk": scratch, "s3": "s3://bench"}, args.repeats)


if __name__ == "__main__":
    main()
