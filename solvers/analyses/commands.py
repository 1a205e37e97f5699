"""`actcache probe`, `actcache neighbors`, `actcache geometry` and `actcache logit-lens` (registered by
solvers/cli.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from actcache.storage.devices import DEVICE_HELP

__all__ = ["register_analyses", "run_geometry", "run_logit_lens", "run_neighbors", "run_probe"]


def _output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", required=True, help="cache folder or s3://bucket/prefix")
    parser.add_argument("--out", required=True, help="output folder (must not exist, unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it is an earlier solver output")
    parser.add_argument("--hook", default="resid_post", help="cached hook to read")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def register_analyses(subparsers: Any) -> None:
    """Add the analyses' subcommands to the top-level command's subparsers."""
    probe = subparsers.add_parser("probe", help="linear probes on cached taps, scored on the test split "
                                                "(metrics.json, predictions.jsonl)")
    _output(probe)
    probe.add_argument("--label-field", required=True, help="label field of the documents (per document, or a "
                                                            "per-token list such as token_labels)")
    probe.add_argument("--task", choices=("classify", "regress", "cluster"), default="classify",
                       help="logistic (AUROC, ECE, Brier), ridge (Pearson, MAE) or k-means vs the label (NMI, ARI)")
    probe.add_argument("--layers", default="all", help="layers, e.g. 8,15; -1 is the model's last layer")
    probe.add_argument("--pooling", default="last", help="token (every token a sample, streamed), last, mean, "
                                                         "mean-skip:K or span:A:B")
    probe.add_argument("--positive", help="classify: the label value of the positive class (strings)")
    probe.add_argument("--split-field", default="split", help="train/test field (metrics are on test)")
    probe.add_argument("--train-value", default="train", help="--split-field value of fitted documents")
    probe.add_argument("--test-value", default="test", help="--split-field value of held-out documents")
    probe.add_argument("--l2", type=float, default=1.0, help="L2 penalty of the weights (scikit-learn's 1/C, "
                                                             "Ridge's alpha), on standardised features")
    probe.add_argument("--epochs", type=int, default=10, help="--pooling token --task cluster: k-means passes")
    probe.add_argument("--batch-size", type=int, default=4096, help="--pooling token: tokens per product/minibatch")
    probe.add_argument("--seed", type=int, default=0, help="shuffling, initialisation and k-means seed")
    probe.set_defaults(func=run_probe)

    neighbors = subparsers.add_parser("neighbors", help="nearest-neighbour retrieval baseline by centred cosine "
                                                        "(neighbors.json, matches.jsonl)")
    _output(neighbors)
    neighbors.add_argument("--layer", type=int, required=True, help="layer to read")
    neighbors.add_argument("--pooling", default="last", help="last, mean, mean-skip:K or span:A:B")
    neighbors.add_argument("--pool-where", action="append", default=[], metavar="FIELD=VALUE",
                           help="pool documents (repeat for more fields or values); default: every document")
    neighbors.add_argument("--query-where", action="append", default=[], metavar="FIELD=VALUE",
                           help="query documents; default: every document (a query never matches itself)")
    neighbors.add_argument("--seed", type=int, default=0, help="seed of the random-pair floor")
    neighbors.set_defaults(func=run_neighbors)

    geometry = subparsers.add_parser("geometry", help="linear CKA between layers, stage count, MLP sparsity and "
                                                      "temperature (geometry.json)")
    _output(geometry)
    geometry.add_argument("--layers", default="all", help="layers to compare; all: every cached layer")
    geometry.add_argument("--cka-method", choices=("auto", "exact", "minibatch"), default="auto",
                          help="auto: exact while the cross-products fit --max-memory, else minibatch")
    geometry.add_argument("--max-memory", default="2GiB", help="bound on the exact CKA accumulator")
    geometry.add_argument("--batch-tokens", type=int, default=1024, help="tokens per minibatch of the estimator")
    geometry.add_argument("--stage-threshold", type=float, default=0.9,
                          help="CKA of consecutive layers below which a stage ends")
    geometry.add_argument("--sparsity-eps", type=float, default=1e-3, help="mlp_act entries with |x| below this "
                                                                           "count as zero")
    geometry.set_defaults(func=run_geometry)

    lens = subparsers.add_parser("logit-lens", help="next-token distributions of cached residuals through the final "
                                                    "norm and unembedding read from the safetensors (top-k mass)")
    lens.add_argument("--cache", required=True, help="cache folder or s3://bucket/prefix")
    lens.add_argument("--layers", default="all", help="layers, e.g. 8,15; -1 is the model's last layer")
    lens.add_argument("--out", help="output folder for logit_lens.json (without it the JSON is only printed)")
    lens.add_argument("--overwrite", action="store_true", help="replace --out if it is an earlier solver output")
    lens.add_argument("--hook", default="resid_post", help="residual hook to read: resid_post, resid_pre, resid_mid")
    lens.add_argument("--top-k", type=int, default=8, help="tokens whose probability mass is reported")
    lens.add_argument("--batch-tokens", type=int, default=256, help="rows per [rows, vocab] logits block")
    lens.add_argument("--device", default="auto", help=DEVICE_HELP)
    lens.set_defaults(func=run_logit_lens)


def run_probe(args: argparse.Namespace) -> int:
    from actcache.solvers.analyses.probe import ProbeSettings, probe_cache
    from actcache.solvers.analyses.token_probe import FitSettings
    from actcache.storage.devices import resolve_device

    fit = FitSettings(l2=args.l2, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                      device=resolve_device(args.device))
    settings = ProbeSettings(label_field=args.label_field, task=args.task, layers=args.layers, pooling=args.pooling,
                             hook=args.hook, positive=args.positive, split_field=args.split_field,
                             train_value=args.train_value, test_value=args.test_value, fit=fit,
                             overwrite=args.overwrite)
    print(probe_cache(args.cache, args.out, settings).summary())
    return 0


def run_neighbors(args: argparse.Namespace) -> int:
    from actcache.solvers.analyses.neighbors import NeighborSettings, neighbors_cache
    from actcache.solvers.cli import parse_where
    from actcache.storage.devices import resolve_device

    settings = NeighborSettings(layer=args.layer, pool_where=parse_where(args.pool_where),
                                query_where=parse_where(args.query_where), pooling=args.pooling, hook=args.hook,
                                seed=args.seed, device=resolve_device(args.device), overwrite=args.overwrite)
    print(json.dumps(neighbors_cache(args.cache, args.out, settings)))
    return 0


def run_geometry(args: argparse.Namespace) -> int:
    from actcache.solvers.analyses.geometry import GeometrySettings, geometry_cache
    from actcache.solvers.memory_budget import parse_bytes
    from actcache.storage.devices import resolve_device

    settings = GeometrySettings(hook=args.hook, layers=args.layers, method=args.cka_method,
                                max_memory=parse_bytes(args.max_memory), batch_tokens=args.batch_tokens,
                                stage_threshold=args.stage_threshold, sparsity_eps=args.sparsity_eps,
                                device=resolve_device(args.device), overwrite=args.overwrite)
    result = geometry_cache(args.cache, args.out, settings)
    print(f"geometry -> {args.out}: cka ({result['cka_method']}) over {result['n_tokens']} tokens, "
          f"{result['stages']} stage(s)")
    return 0


def run_logit_lens(args: argparse.Namespace) -> int:
    from actcache.solvers.analyses.logit_lens import LogitLensSettings, logit_lens_cache
    from actcache.storage.devices import resolve_device

    settings = LogitLensSettings(layers=args.layers, hook=args.hook, top_k=args.top_k, batch_tokens=args.batch_tokens,
                                 device=resolve_device(args.device), overwrite=args.overwrite)
    print(json.dumps(logit_lens_cache(args.cache, args.out, settings), indent=1))
    return 0
