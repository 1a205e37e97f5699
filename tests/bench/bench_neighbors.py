"""Benchmark: the exact nearest-neighbour search of `actcache neighbors` (blocked products, running argmax) on a
synthetic pool, against a brute-force numpy argmax over the full score matrix where that fits.

    .venv/bin/python tests/bench/bench_neighbors.py [--pool 100000] [--queries 2000] [--width 576] [--device cpu]

Synthetic data: unit-variance Gaussian rows plus a common offset (as residual streams have), float32. The
timing covers centring, normalising, all blocked products and the cosines of the matches (not pooling from a
cache, which `actcache neighbors` does once, streamed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pool", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--width", type=int, default=576)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import torch
    from actcache.solvers.analyses.neighbors import nearest_neighbors

    rng = np.random.default_rng(0)
    offset = 3.0 * rng.standard_normal(args.width).astype(np.float32)
    pool = rng.standard_normal((args.pool, args.width), dtype=np.float32) + offset
    queries = rng.standard_normal((args.queries, args.width), dtype=np.float32) + offset
    nearest_neighbors(queries[:8], pool[:64], device=args.device)  # warm-up (kernels, threads)
    start = time.perf_counter()
    found = nearest_neighbors(queries, pool, device=args.device)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    took = time.perf_counter() - start
    print(f"pool {args.pool} x {args.width}, {args.queries} queries, {args.device} ({torch.get_num_threads()} "
          f"threads): {took:.2f} s, {args.queries / took:.0f} queries/s, "
          f"{args.queries * args.pool / took / 1e9:.2f} G pairs/s")
    if args.queries * args.pool <= 4e8:
        mu = pool.mean(axis=0, dtype=np.float64).astype(np.float32)
        pc, qc = pool - mu, queries - mu
        pc /= np.linalg.norm(pc, axis=1, keepdims=True)
        qc /= np.linalg.norm(qc, axis=1, keepdims=True)
        start = time.perf_counter()
        best = (qc @ pc.T).argmax(axis=1)
        print(f"brute-force numpy (full score matrix): {time.perf_counter() - start:.2f} s; same neighbours: "
              f"{(best == found.index).mean():.4f}")


if __name__ == "__main__":
    main()
