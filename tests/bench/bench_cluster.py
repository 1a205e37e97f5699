"""Distributed build throughput on SmolLM2-135M (safetensors) against the single-process builder, in one run.

    .venv/bin/python tests/bench/bench_cluster.py [--copies 1] [--batch-size 8] [--layers 8,15,22]

Prints tokens/s of: the single-process builder, S=2 and S=3 pipelines (one replica), and R=2 replicas of the
whole model (S=1), each on a local Ray instance with one CPU thread per stage, and their ratios to the single
process. "run" excludes starting the actors and loading their layers (paid once per backbone, e.g. by a
resident service; for the single process: the model load, timed alone); "end-to-end" includes it, as a one-off
`build_distributed` or `build_cache` pays it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from actcache.cache_builder.build import build_cache, parse_layers, prepare_build
from actcache.cache_builder.model_source import load_model, resolve_model
from actcache.cache_builder.settings import BuildSettings
from actcache.cluster.pipeline import Backbone, stage_ranges
from actcache.cluster.ray_connect import connect
from bench_build import write_bench_corpus

LAYOUTS = (("pipeline S=2", 2, 1), ("pipeline S=3", 3, 1), ("replicas R=2 (S=1)", 1, 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--copies", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--layers", default="8,15,22")
    args = parser.parse_args()
    model = resolve_model(args.model)
    n_layers = json.loads((model.path / "config.json").read_text())["num_hidden_layers"]
    deepest = parse_layers(args.layers, n_layers)[-1]
    with tempfile.TemporaryDirectory(prefix="actcache-bench-cluster-") as tmp:
        corpus = write_bench_corpus(Path(tmp), args.copies)

        def settings(name: str) -> BuildSettings:
            return BuildSettings(model=str(model.path), corpus=corpus, out=Path(tmp) / name, layers=args.layers,
                                 batch_size=args.batch_size, progress=False)

        started = time.perf_counter()
        load_model(model)  # timed alone: the single-process build's own seconds include this load
        load = time.perf_counter() - started
        single = build_cache(settings("single"))
        tokens = single.built_tokens
        rows = [("single process", 1, 1, load, single.seconds - load, single.seconds)]
        connect(None, num_cpus=max(os.cpu_count() or 1, 3))
        for label, stages, replicas in LAYOUTS:
            started = time.perf_counter()
            backbone = Backbone(model, stage_ranges(model, deepest, stages), replicas)
            startup = time.perf_counter() - started
            try:
                report = backbone.build(prepare_build(settings(f"s{stages}r{replicas}")))
            finally:
                backbone.shutdown()
            assert report.built_tokens == tokens
            rows.append((label, stages, replicas, startup, report.seconds, startup + report.seconds))
    print(f"SmolLM2-135M distributed build: {tokens} tokens, layers {args.layers} (both hooks), batch "
          f"{args.batch_size}, float32, {os.cpu_count()} cores; single process uses {torch.get_num_threads()} "
          f"torch threads, each stage 1")
    print(f"{'run':<22}{'actors':>7}{'startup s':>10}{'run s':>8}{'tok/s run':>11}{'x single':>9}"
          f"{'tok/s e2e':>11}{'x single':>9}")
    base_run, base_e2e = tokens / rows[0][4], tokens / rows[0][5]
    for label, stages, replicas, startup, run, e2e in rows:
        actors = 0 if label == "single process" else stages * replicas
        print(f"{label:<22}{actors:>7}{startup:>10.1f}{run:>8.1f}{tokens / run:>11.0f}{tokens / run / base_run:>9.2f}"
              f"{tokens / e2e:>11.0f}{tokens / e2e / base_e2e:>9.2f}")


if __name__ == "__main__":
    main()
