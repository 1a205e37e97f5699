"""`actcache solve` and `actcache sweep`: the solvers' subcommands (wired by actcache_cli via `register`)."""

from __future__ import annotations

import argparse
from typing import Any

from actcache.solvers.analyses.commands import register_analyses
from actcache.solvers.defaults import (
    GATE_MAX_AUROC_DELTA,
    GATE_MIN_CAA_COSINE,
    SOLVE_METHODS,
    SWEEP_METHODS,
    SWEEP_POOLINGS,
)
from actcache.solvers.html_report.command import register_report
from actcache.storage.devices import DEVICE_HELP

__all__ = ["parse_where", "register", "run_compare", "run_score", "run_solve", "run_sweep"]

_METHODS_HELP = ("comma list of caa, subspace, heads, ridge, quality and the aggregators mean, pca, logistic, "
                 "logistic_l1, linear, pca_diff, pca_center; or all")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", required=True, help="cache folder or s3://bucket/prefix")
    parser.add_argument("--out", required=True, help="output folder (must not exist, unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out if it is an earlier solve/sweep output (written atomically)")
    _add_run_options(parser)


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """--layers, the label options and the resources (solve, sweep and compare)."""
    parser.add_argument("--layers", default="all",
                        help="layers to solve, e.g. 8,15; -1 is the model's last layer; all: every cached layer")
    labels = parser.add_argument_group("labels (default: the story layout's concept/role metadata)")
    labels.add_argument("--label-field", help="JSONL label field, e.g. sentiment (needs --positive)")
    labels.add_argument("--positive", help="value of --label-field that marks positives, e.g. positive")
    labels.add_argument("--pair-field", help="with --label-field: field naming each pair (documents sharing a value "
                                             "form one: one positive, one or more negatives); needed by aggregators")
    labels.add_argument("--split-field", help="train/test split field, e.g. split (test documents are held out)")
    labels.add_argument("--train-value", default="train", help="split value of fitted documents")
    labels.add_argument("--test-value", default="test", help="--split-field value of held-out documents")
    labels.add_argument("--min-positives", type=int, default=1, help="skip concepts with fewer positives")
    labels.add_argument("--concepts", type=_csv, help="solve only these concepts (comma list)")
    run = parser.add_argument_group("resources")
    run.add_argument("--max-memory", help="bound on the solve's data in memory, e.g. 200MB (default: none)")
    run.add_argument("--device", default="auto", help=DEVICE_HELP)
    run.add_argument("--workers", type=int, default=1,
                     help="Ray tasks over (concept, layer) on N CPUs; 1 runs in process, without Ray")
    run.add_argument("--threads", type=int, default=1, help="torch CPU threads per worker")


def register(subparsers: Any) -> None:
    """Add `solve`, `sweep` and `score` to the top-level command's subparsers."""
    solve = subparsers.add_parser("solve", help="concept vectors, head ranking and quality report from a cache")
    _add_common(solve)
    solve.add_argument("--methods", type=_csv, default=SOLVE_METHODS,
                       help=_METHODS_HELP + " (heads is skipped, with a note, on a cache without attn_z)")
    solve.add_argument("--pooling", default="last", help="last, mean, mean-skip:K or span:A:B")
    solve.add_argument("--readout", default="caa", help="method whose vectors fill readout.safetensors")
    solve.add_argument("--aggregator", type=_csv, default=(),
                       help="steering-vectors / repeng aggregators on paired samples, comma list: mean, pca, "
                            "logistic, logistic_l1, linear, pca_diff, pca_center")
    solve.add_argument("--quality-cap", type=int, default=256, help="pooled positives kept per concept for the "
                                                                    "quality report")
    solve.set_defaults(func=run_solve)

    sweep = subparsers.add_parser("sweep", help="many variants (poolings x methods x layers) from one read, compared")
    _add_common(sweep)
    sweep.add_argument("--poolings", type=_csv, default=SWEEP_POOLINGS,
                       help="comma list (plain mean is usually dominated by the first token: use mean-skip:1)")
    sweep.add_argument("--methods", type=_csv, default=SWEEP_METHODS,
                       help="vector methods: caa, subspace and aggregators")
    sweep.set_defaults(func=run_sweep)

    score = subparsers.add_parser("score", help="each document's projection on each concept direction of a readout "
                                                "(JSON lines: key, text, concept, layer, score)")
    score.add_argument("--cache", required=True, help="cache folder or s3://bucket/prefix")
    score.add_argument("--readout", required=True, help="output folder of solve or sweep")
    score.add_argument("--method", help="score this method's vectors (methods/<name>.json) instead of readout.json")
    score.add_argument("--out", required=True, help="JSON-lines file to write (replaced when it exists)")
    score.add_argument("--layers", default="all", help="layers of the readout to score, e.g. 8,15 or all")
    score.add_argument("--pooling", default="last", help="last, mean, mean-skip:K or span:A:B")
    score.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE",
                       help="only documents with this label value (repeat for more fields, or for several values)")
    score.set_defaults(func=run_score)

    compare = subparsers.add_parser("compare", help="quality gate of a lossy cache (build --store-as): solve it and "
                                                    "its exact twin, compare CAA, held-out AUROC, subspace, ridge")
    compare.add_argument("exact", help="cache built with --store-as exact")
    compare.add_argument("lossy", help="the same model and corpus built with a lossy --store-as")
    compare.add_argument("--out", help="JSON file for every figure (replaced when it exists)")
    compare.add_argument("--pooling", default="last", help="last, mean, mean-skip:K or span:A:B")
    compare.add_argument("--min-caa-cosine", type=float, default=GATE_MIN_CAA_COSINE,
                         help="gate: smallest CAA cosine allowed")
    compare.add_argument("--max-auroc-delta", type=float, default=GATE_MAX_AUROC_DELTA,
                         help="gate: largest |AUROC delta| allowed")
    _add_run_options(compare)
    compare.set_defaults(func=run_compare)
    register_analyses(subparsers)  # probe, neighbors, geometry, logit-lens
    register_report(subparsers)  # the HTML page of solve/probe/geometry outputs


def _labels(args: argparse.Namespace) -> Any:
    from actcache.solvers.job_inputs import LabelSpec

    return LabelSpec(args.label_field, args.positive, args.split_field, args.min_positives, args.concepts,
                     pair_field=args.pair_field, train_value=args.train_value, test_value=args.test_value)


def _memory(args: argparse.Namespace) -> int | None:
    from actcache.solvers.memory_budget import parse_bytes

    return None if args.max_memory is None else parse_bytes(args.max_memory)


def run_solve(args: argparse.Namespace) -> int:
    from actcache.solvers.job import SolveSettings, solve_cache

    settings = SolveSettings(methods=args.methods, layers=args.layers, pooling=args.pooling, readout=args.readout,
                             aggregators=args.aggregator, labels=_labels(args), max_memory=_memory(args),
                             device=args.device, workers=args.workers, threads=args.threads,
                             quality_cap=args.quality_cap, overwrite=args.overwrite)
    print(solve_cache(args.cache, args.out, settings).summary())
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    from actcache.solvers.sweep import SweepSettings, sweep_cache

    settings = SweepSettings(poolings=args.poolings, methods=args.methods, layers=args.layers, labels=_labels(args),
                             max_memory=_memory(args), device=args.device, workers=args.workers,
                             threads=args.threads, overwrite=args.overwrite)
    print(sweep_cache(args.cache, args.out, settings).summary())
    return 0


def run_compare(args: argparse.Namespace) -> int:
    """Exit 0 when the gate passes, 1 when it fails (the table says which figure)."""
    import json
    from pathlib import Path

    from actcache.solvers.compare import GateSettings, compare_caches

    settings = GateSettings(pooling=args.pooling, min_caa_cosine=args.min_caa_cosine,
                            max_auroc_delta=args.max_auroc_delta, layers=args.layers, labels=_labels(args),
                            max_memory=_memory(args), device=args.device, workers=args.workers, threads=args.threads)
    result = compare_caches(args.exact, args.lossy, settings)
    if args.out:
        Path(args.out).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    print(result.table())
    return 0 if result.passed else 1


def parse_where(pairs: list[str]) -> dict[str, list[str]] | None:
    """--where FIELD=VALUE (repeated) -> {field: [values]}; a field given twice matches either value."""
    from actcache.solvers.errors import SolverInputError

    where: dict[str, list[str]] = {}
    for pair in pairs:
        field, sep, value = pair.partition("=")
        if not sep or not field:
            raise SolverInputError(f"--where {pair!r}: use FIELD=VALUE, e.g. --where split=test")
        where.setdefault(field, []).append(value)
    return where or None


def run_score(args: argparse.Namespace) -> int:
    from actcache.solvers.score import score_cache

    result = score_cache(args.cache, args.readout, args.out, method=args.method, layers=args.layers,
                         pooling=args.pooling, where=parse_where(args.where))
    print(result.summary())
    return 0
