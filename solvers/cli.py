"""`actcache solve` and `actcache sweep`: the solvers' subcommands (wired by actcache_cli via `register`)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register", "run_solve", "run_sweep"]

_METHODS_HELP = ("comma list of caa, subspace, heads, ridge, quality and the aggregators mean, pca, logistic, "
                 "logistic_l1, linear, pca_diff, pca_center; or all")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", required=True, help="cache folder")
    parser.add_argument("--out", required=True, help="output folder (must not exist)")
    parser.add_argument("--layers", default="all", help="layers to solve, e.g. 8,15 (default: all cached layers)")
    labels = parser.add_argument_group("labels (default: the story layout's concept/role metadata)")
    labels.add_argument("--label-field", help="JSONL label field, e.g. sentiment (needs --positive)")
    labels.add_argument("--positive", help="value of --label-field that marks positives, e.g. positive")
    labels.add_argument("--split-field", help="train/test split field, e.g. split (test documents are held out)")
    labels.add_argument("--min-positives", type=int, default=1, help="skip concepts with fewer positives (default 1)")
    labels.add_argument("--concepts", type=_csv, help="solve only these concepts (comma list)")
    run = parser.add_argument_group("resources")
    run.add_argument("--max-memory", help="bound on the solve's data in memory, e.g. 200MB (default: none)")
    run.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    run.add_argument("--workers", type=int, default=1, help="Ray tasks over (concept, layer) on N CPUs (default 1: "
                                                            "in process, no Ray)")
    run.add_argument("--threads", type=int, default=1, help="torch CPU threads per worker (default 1)")


def register(subparsers: Any) -> None:
    """Add `solve` and `sweep` to the top-level command's subparsers."""
    solve = subparsers.add_parser("solve", help="concept vectors, head ranking and quality report from a cache")
    _add_common(solve)
    solve.add_argument("--methods", type=_csv, default=("caa", "subspace", "heads", "ridge", "quality"),
                       help=_METHODS_HELP + " (default caa,subspace,heads,ridge,quality)")
    solve.add_argument("--pooling", default="last", help="last, mean, mean-skip:K or span:A:B (default last)")
    solve.add_argument("--readout", default="caa", help="method whose vectors fill readout.safetensors (default caa)")
    solve.add_argument("--aggregator", type=_csv, default=(),
                       help="steering-vectors / repeng aggregators on paired samples, comma list: mean, pca, "
                            "logistic, logistic_l1, linear, pca_diff, pca_center")
    solve.add_argument("--quality-cap", type=int, default=256, help="pooled positives kept per concept for the "
                                                                    "quality report (default 256)")
    solve.set_defaults(func=run_solve)

    sweep = subparsers.add_parser("sweep", help="many variants (poolings x methods x layers) from one read, compared")
    _add_common(sweep)
    sweep.add_argument("--poolings", type=_csv, default=("last", "mean"), help="comma list (default last,mean)")
    sweep.add_argument("--methods", type=_csv, default=("caa", "pca", "logistic", "subspace"),
                       help="vector methods: caa, subspace and aggregators (default caa,pca,logistic,subspace)")
    sweep.set_defaults(func=run_sweep)


def _labels(args: argparse.Namespace) -> Any:
    from actcache.solvers.job_inputs import LabelSpec

    return LabelSpec(args.label_field, args.positive, args.split_field, args.min_positives, args.concepts)


def _memory(args: argparse.Namespace) -> int | None:
    from actcache.solvers.memory import parse_bytes

    return None if args.max_memory is None else parse_bytes(args.max_memory)


def run_solve(args: argparse.Namespace) -> int:
    from actcache.solvers.job import SolveSettings, solve_cache

    settings = SolveSettings(methods=args.methods, layers=args.layers, pooling=args.pooling, readout=args.readout,
                             aggregators=args.aggregator, labels=_labels(args), max_memory=_memory(args),
                             device=args.device, workers=args.workers, threads=args.threads,
                             quality_cap=args.quality_cap)
    print(solve_cache(args.cache, args.out, settings).summary())
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    from actcache.solvers.sweep import SweepSettings, sweep_cache

    settings = SweepSettings(poolings=args.poolings, methods=args.methods, layers=args.layers, labels=_labels(args),
                             max_memory=_memory(args), device=args.device, workers=args.workers,
                             threads=args.threads)
    print(sweep_cache(args.cache, args.out, settings).summary())
    return 0
