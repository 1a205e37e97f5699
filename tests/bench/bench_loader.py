"""Benchmark: the token loader (`CacheReader.tokens`) against the codec's own decode limit, measured in the same run.

    .venv/bin/python tests/bench/bench_loader.py [--tokens 98304] [--width 576] [--batch 4096] [--epochs 3]
        [--repeats 5]

Cache: one layer of `resid_post` and `attn_z` (float32, `--width` wide), written through `CacheWriter` from
Gaussian rows with per-feature log-normal scales (outlier features, as real residuals have) in documents of 20 to
600 tokens. Decode limit: zstd + unshuffle of the same chunk bytes already in memory, into reused buffers, one
thread, no zarr, no object reads, no checksum; the unshuffle is the faster of numcodecs' own and the loader's
(`ChunkDecoder.unshuffle`). Loader rows: `--epochs` passes over one loader (a training loop's `for epoch: for
batch in loader`), every batch as float32 tensors of both arrays, timed from the start of the second pass to the
end of the last (each pass's start-up and first window's wait included, so that no window decoded before the clock
started flatters a rate); the first pass is a warm-up, as a training run's first epoch is (buffers allocated,
workers started: `persistent_workers=True`). "threads" are the loader's decoding threads in one process,
"workers" DataLoader worker processes. "MB per CPU s" divides the decoded bytes delivered by the CPU time of the
process and its workers: on a shared machine wall-clock rates mostly measure the neighbours; "kernel share" is
the part of that CPU time spent in the kernel (page faults on fresh memory, file reads). Rows with two threads or
workers are compared both with the one-thread limit x 2 and with two decode-limit passes running at once (the
limit of two cores measured together: on this 2-vCPU virtual machine they share more than x 2 assumes), as two
threads for the threads row and as two processes for the workers row (two processes decode less together). Every
figure is the median over `--repeats` rounds; each round measures the limits, then the sequential read, then the
shuffled one, and its ratios divide each read by the limits of its own round ("vs sequential": the shuffled read
by the sequential one just before it), so that the machine's swings (+-30% within a minute here) hit both sides.
Mixing: how often two rows of a batch come from the same document, divided by that rate under a perfect shuffle
of the whole epoch (1.0 is perfect; it grows with cache tokens / window rows, so a big cache shows larger values).
Peak memory is the RSS high-water mark above the RSS when the run starts (VmHWM, reset via /proc/self/clear_refs).
Last: a bf16 cache of the same rows read as its own bits and as float32 (widened by the decoding tasks).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import resource
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def _status(field: str) -> int:
    return int(re.search(field + r":\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def write_cache(path: Path, tokens: int, width: int, dtype: str = "float32") -> None:
    """float32 rows, or the same rows rounded to bf16 for `dtype="bfloat16"`."""
    import torch
    from actcache.storage import CacheFingerprint, CacheWriter, CaptureSpec, DocRecord

    fp = CacheFingerprint(model={"architecture": "Bench"}, tokenizer={"backend_sha256": "bench"}, dtype=dtype,
                          capture=CaptureSpec(hooks=("resid_post", "attn_z"), layers=(0,), max_length=600),
                          widths={"resid_post": width, "attn_z": width},
                          hook_attrs={"attn_z": {"n_heads": width // 64, "head_dim": 64}})
    rng = np.random.default_rng(0)
    writer = CacheWriter.open(path, fp)
    unit_tokens, unit = 16384, 0
    while tokens > 0:
        lengths: list[int] = []
        while sum(lengths) < min(unit_tokens, tokens):
            lengths.append(int(rng.integers(20, 601)))
        n = sum(lengths)
        docs = [DocRecord(f"u{unit}-d{i}", length, {"split": "train" if i % 5 else "test"})
                for i, length in enumerate(lengths)]
        segment = writer.begin_segment(f"unit-{unit}", docs, rng.integers(0, 1000, n))
        seg_writer = writer.segment_writer(segment)
        for hook in ("resid_post", "attn_z"):
            scale = np.exp(rng.normal(0.0, 1.0, width)).astype(np.float32)
            rows = rng.standard_normal((n, width), dtype=np.float32) * scale
            seg_writer.append(f"{hook}/layer_0", rows if dtype == "float32" else torch.from_numpy(rows).bfloat16())
        assert writer.commit(f"unit-{unit}", segment, docs, seg_writer.close())
        tokens -= n
        unit += 1


def _cpu_times(source: object = None) -> tuple[float, float]:
    """(user, kernel) CPU seconds of this process (all threads), of its finished children, and of the live
    DataLoader workers of `source` (persistent workers, read from /proc)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    workers = getattr(getattr(source, "_iterator", None), "_workers", [])
    ticks = [list(map(int, Path(f"/proc/{w.pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13]))
             for w in workers]
    tick = os.sysconf("SC_CLK_TCK")
    return (own.ru_utime + children.ru_utime + sum(t[0] for t in ticks) / tick,
            own.ru_stime + children.ru_stime + sum(t[1] for t in ticks) / tick)


def _cpu_seconds(source: object = None) -> float:
    return sum(_cpu_times(source))


def read_and_check(path: Path, decoded_bytes: int) -> float:
    """Decoded MB per CPU second that reading the chunk objects (`LocalBackend.read_into`, a reused buffer) and
    checking their crc32c alone allow: the loader's work that the decode limit leaves out."""
    import crc32c
    from actcache.storage.backends import LocalBackend

    backend = LocalBackend(path)
    keys = [p.relative_to(path).as_posix() for p in sorted(path.glob("segments/*/*/layer_0/c/*/0"))]
    buffer = np.empty(decoded_bytes // len(keys) * 2 + 4096, np.uint8)
    start_cpu = _cpu_seconds()
    for key in keys:
        crc32c.crc32c(buffer.data[:backend.read_into(key, buffer.data) - 4])
    return decoded_bytes / (_cpu_seconds() - start_cpu) / 1e6


def chunk_blobs(path: Path) -> list[bytes]:
    """Every activation chunk's compressed bytes (checksum stripped), read once."""
    return [p.read_bytes()[:-4] for p in sorted(path.glob("segments/*/*/layer_0/c/*/0"))]


def _unshuffle_words(words: np.ndarray, raw: np.ndarray) -> int:
    """ChunkDecoder.unshuffle's shifts and ors over a whole chunk of 4-byte values (releases the GIL)."""
    planes = raw.reshape(4, -1)
    np.copyto(words, planes[3])
    for byte in (2, 1, 0):
        np.left_shift(words, 8, out=words)
        np.bitwise_or(words, planes[byte], out=words)
    return words.nbytes


def decode_limit(blobs: list[bytes]) -> tuple[float, float]:
    """Decoded MB per wall second and per CPU second of one thread: zstd + unshuffle of every chunk into reused
    buffers (no page faults), one pass with each unshuffle (numcodecs', the loader's); the faster pass counts."""
    from numcodecs import Shuffle, Zstd

    zstd, shuffle = Zstd(), Shuffle(elementsize=4)
    raw = np.empty(len(zstd.decode(blobs[0])), np.uint8)
    words = np.empty(len(raw) // 4, np.uint32)
    passes = []
    for unshuffle in (lambda r: len(shuffle.decode(r, out=words)), lambda r: _unshuffle_words(words, r)):
        start, start_cpu = time.perf_counter(), _cpu_seconds()
        decoded = sum(unshuffle(zstd.decode(b, out=raw)) for b in blobs)
        passes.append((decoded / (time.perf_counter() - start) / 1e6, decoded / (_cpu_seconds() - start_cpu) / 1e6))
    return max(passes)


def _decode_all(blobs: list[bytes], size: int, barrier: threading.Barrier) -> tuple[float, float]:
    """One decode-limit pass (zstd + the loader's unshuffle, which release the GIL) over every chunk, with its own
    buffers, started with the others at `barrier`: (start, finish) on the monotonic clock every process shares."""
    from numcodecs import Zstd

    zstd, raw, words = Zstd(), np.empty(size, np.uint8), np.empty(size // 4, np.uint32)
    barrier.wait()
    start = time.perf_counter()
    for blob in blobs:
        _unshuffle_words(words, zstd.decode(blob, out=raw))
    return start, time.perf_counter()


def _decode_all_to(queue: multiprocessing.Queue, *args: object) -> None:
    queue.put(_decode_all(*args))


def concurrent_limit(blobs: list[bytes], parallel: int, processes: bool = False) -> float:
    """Decoded MB per wall second of `parallel` decode-limit passes running at once, as threads of one process or
    as forked processes (what the loader's threads or DataLoader workers could reach together here; two processes
    decode less together than two threads on this machine). Cores of a virtual machine share more than a limit x N
    assumes (caches, the host's sibling threads)."""
    from numcodecs import Zstd

    size = len(Zstd().decode(blobs[0]))
    if processes:
        context = multiprocessing.get_context("fork")
        barrier, queue = context.Barrier(parallel), context.Queue()
        children = [context.Process(target=_decode_all_to, args=(queue, blobs, size, barrier))
                    for _ in range(parallel)]
        for child in children:
            child.start()
        spans = [queue.get() for _ in children]
        for child in children:
            child.join()
    else:
        barrier = threading.Barrier(parallel)
        with ThreadPoolExecutor(parallel) as pool:
            spans = list(pool.map(lambda _: _decode_all(blobs, size, barrier), range(parallel)))
    seconds = max(finish for _, finish in spans) - min(start for start, _ in spans)
    return parallel * len(blobs) * size / seconds / 1e6


def run_loader(path: Path, *, shuffle: bool, threads: int | None = 1, workers: int = 0, batch: int = 4096,
               buffer_tokens: int = 1 << 15, epochs: int = 3, dtype: str = "float32") -> dict:
    """`epochs` epochs: seconds, CPU seconds, tokens, peak RSS above the start, and the mixing ratio."""
    from actcache.storage import open_cache
    from torch.utils.data import DataLoader

    reader = open_cache(path)
    doc_of = np.repeat(np.arange(reader.n_documents), [d.n_tokens for d in reader.documents()])
    rss = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    ds = reader.tokens(batch_size=batch, shuffle=shuffle, threads=threads, buffer_tokens=buffer_tokens, dtype=dtype)
    source = ds if workers == 0 else DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=True)
    tokens, same_pairs, pairs = 0, 0, 0
    for epoch in range(epochs + 1):
        if epoch == 1:
            start, start_cpu, start_kernel = time.perf_counter(), _cpu_seconds(source), _cpu_times(source)[1]
        for b in source:
            index = b["token_index"].numpy()
            tokens += len(index) if epoch else 0
            counts = np.bincount(doc_of[index])
            same_pairs += int((counts * (counts - 1)).sum())
            pairs += len(index) * (len(index) - 1)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds(source) - start_cpu
    kernel = _cpu_times(source)[1] - start_kernel
    del source, b
    sizes = np.bincount(doc_of).astype(np.float64)
    perfect = (sizes * (sizes - 1)).sum() / (len(doc_of) * (len(doc_of) - 1))
    return {"seconds": seconds, "cpu": cpu, "kernel": kernel, "tokens": tokens, "peak": _status("VmHWM") - rss,
            "mixing": same_pairs / pairs / perfect}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=98304)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per loader run, after a warm-up one")
    parser.add_argument("--width", type=int, default=576)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5, help="rounds per loader setting; medians are reported")
    parser.add_argument("--buffers", default="8192,32768,131072", help="buffer_tokens values for the memory rows")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        path = Path(tmp) / "cache"
        start = time.perf_counter()
        write_cache(path, args.tokens, args.width)
        print(f"wrote {args.tokens} tokens x 2 arrays x {args.width} float32 in {time.perf_counter() - start:.1f} s "
              f"({os.cpu_count()} cores visible)", flush=True)
        blobs = chunk_blobs(path)
        token_bytes = 2 * args.width * 4
        limits = [decode_limit(blobs) for _ in range(3)]
        from numcodecs import Zstd

        decoded = len(blobs) * len(Zstd().decode(blobs[0]))  # every chunk decodes to the same size
        io = max(read_and_check(path, decoded) for _ in range(3))
        limit_cpu = max(c for _, c in limits)
        print(f"load average {os.getloadavg()[0]:.1f}; decode limit over {len(blobs)} chunks: up to "
              f"{max(w for w, _ in limits):.0f} MB/s per wall second, {limit_cpu:.0f} MB per CPU "
              "second; every loader run below is paired with a decode-limit pass right before it", flush=True)
        print(f"reading the chunk objects and checking their crc32c alone: {io:.0f} MB per CPU second, so a reader "
              f"that must do both can reach at most {1 / (1 / limit_cpu + 1 / io):.0f} MB per CPU second "
              f"({1 / (1 + limit_cpu / io):.2f}x of the decode limit)", flush=True)

        def mb_s(run: dict) -> float:
            return run["tokens"] * token_bytes / run["seconds"] / 1e6

        rows, scaling = [], {}  # scaling: per parallel set-up, what N decoders at once reach vs one limit x N
        for label, kwargs, parallel in [("1 thread", {"threads": 1}, 1), ("2 threads", {"threads": 2}, 2),
                                        ("2 workers", {"workers": 2, "threads": None}, 2)]:
            pairs = []  # (limit wall, limit cpu, N at once, sequential run, shuffled run), interleaved against load
            for _ in range(args.repeats):
                limit = decode_limit(blobs)
                together = limit[0] if parallel == 1 else concurrent_limit(blobs, parallel, "workers" in kwargs)
                runs = [run_loader(path, shuffle=shuffle, batch=args.batch, epochs=args.epochs, **kwargs)
                        for shuffle in (False, True)]
                pairs.append((*limit, together, *runs))
            if parallel > 1:
                scaling[label] = (parallel, float(np.median([pair[2] / (pair[0] * parallel) for pair in pairs])))
            for index, order in ((3, "sequential"), (4, "shuffled")):
                runs = [pair[index] for pair in pairs]
                per_cpu = [run["tokens"] * token_bytes / run["cpu"] / 1e6 for run in runs]
                kernel = [run["kernel"] / run["cpu"] for run in runs]
                ratios = [(mb_s(pair[index]) / (pair[0] * parallel), mb_s(pair[index]) / pair[2],
                           mb_s(pair[4]) / mb_s(pair[3]), cpu / pair[1])
                          for pair, cpu in zip(pairs, per_cpu, strict=True)]
                vs_limit, vs_together, vs_sequential, cpu_vs_limit = np.median(ratios, axis=0)
                rate = float(np.median([run["tokens"] / run["seconds"] for run in runs]))
                rows.append((label, order, f"{rate:,.0f}", f"{rate * token_bytes / 1e9:.2f}", f"{vs_limit:.2f}x",
                             f"{vs_together:.2f}x", f"{vs_sequential:.2f}x" if index == 4 else "1",
                             f"{np.median(per_cpu):.0f} ({cpu_vs_limit:.2f}x)", f"{np.median(kernel):.0%}",
                             f"{runs[0]['mixing']:.1f}"))
                print(" | ".join(rows[-1]), flush=True)
        print("\n| reader | order | tokens/s | GB/s (float32) | vs decode limit x parallel | vs that many decoders "
              "at once | vs sequential | MB per CPU s (vs limit) | kernel share of CPU | same-document pairs vs "
              "perfect |\n|---|---|---|---|---|---|---|---|---|---|\n"
              + "\n".join("| " + " | ".join(r) + " |" for r in rows))
        cap = 1 / (1 + limit_cpu / io)
        for label, (parallel, share) in scaling.items():
            kind = "processes" if "workers" in label else "threads"
            print(f"{label}: {parallel} decoding {kind} at once reach {share:.2f}x of the one-thread limit x "
                  f"{parallel} here; with the object reads and checksums (at most {cap:.2f}x of the limit) no such "
                  f"reader can pass {share * cap:.2f}x in the 'vs decode limit x parallel' column", flush=True)

        print("\n| buffer_tokens | peak RSS above start (MiB) | window (MiB) | same-document pairs vs perfect |\n"
              "|---|---|---|---|")
        for buffer in map(int, args.buffers.split(",")):
            run = run_loader(path, shuffle=True, threads=2, batch=args.batch, buffer_tokens=buffer, epochs=1)
            window = max(1, buffer // args.batch) * args.batch * token_bytes / 2**20
            print(f"| {buffer} | {run['peak'] / 2**20:.0f} | {window:.0f} | {run['mixing']:.1f} |", flush=True)

        bf16 = Path(tmp) / "bf16"
        write_cache(bf16, args.tokens, args.width, "bfloat16")
        print("\n| bf16 cache, sequential | tokens/s read as bfloat16 | as float32 (widened) | float32 / bfloat16 |\n"
              "|---|---|---|---|")
        for label, kwargs in [("1 thread", {"threads": 1}), ("2 workers", {"workers": 2, "threads": None})]:
            rates = [[run["tokens"] / run["seconds"] for run in
                      (run_loader(bf16, shuffle=False, epochs=args.epochs, dtype=dtype, **kwargs)
                       for dtype in ("bfloat16", "float32"))] for _ in range(args.repeats)]
            own, wide = np.median(rates, axis=0)
            ratio = np.median([w / o for o, w in rates])
            print(f"| {label} | {own:,.0f} | {wide:,.0f} | {ratio:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
