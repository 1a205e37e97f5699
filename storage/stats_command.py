"""`actcache stats CACHE --hooks H --layers L [--out F]`: normalisation constants in one pass (activation_stats.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .errors import CacheError

__all__ = ["register"]


def register(subparsers: Any) -> None:
    stats = subparsers.add_parser("stats", help="per (hook, layer) mean, std and token-norm quantiles, in one pass")
    stats.add_argument("cache", help="cache folder or s3://bucket/prefix")
    stats.add_argument("--hooks", default="all", help="comma-separated hooks, or all")
    stats.add_argument("--layers", default="all", help="layers: e.g. 8,15, -1 (the last layer) or all")
    stats.add_argument("--out", type=Path, help="write the JSON here (with the per-feature mean and std) and print a "
                                                "summary; without it, the JSON goes to stdout")
    stats.set_defaults(func=run_stats)


def run_stats(args: argparse.Namespace) -> int:
    from .activation_stats import activation_stats
    from .hook_points import is_integer_hook
    from .reader import open_cache
    from .selection import model_layer_count, select_layers

    reader = open_cache(args.cache)
    hooks = (tuple(h for h in reader.hooks if not is_integer_hook(h)) if args.hooks == "all"  # no router ids
             else tuple(h.strip() for h in args.hooks.split(",") if h.strip()))
    layers, missing = select_layers(args.layers, reader.layers, model_layer_count(reader.fingerprint))
    if missing:
        raise CacheError(f"--layers {','.join(map(str, missing))}: not in {args.cache}, which holds layers "
                         f"{','.join(map(str, reader.layers))}")
    result = activation_stats(reader, hooks, layers)
    if args.out is None:
        print(json.dumps(result))
        return 0
    args.out.write_text(json.dumps(result, indent=1))
    print(f"{result['tokens']} tokens of {args.cache} -> {args.out}")
    for key, entry in result["arrays"].items():
        q = entry["norm_quantiles"]
        print(f"  {key:<18} |mean| {entry['mean_norm']:.4g}  mean std {entry['std_mean']:.4g}  norm mean "
              f"{entry['norm_mean']:.4g}  p1/p50/p99 {q['0.01']:.4g}/{q['0.5']:.4g}/{q['0.99']:.4g}")
    return 0
