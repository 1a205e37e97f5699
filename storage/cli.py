"""`actcache info` and `actcache verify`: what a cache holds, and whether every byte of it is intact."""

from __future__ import annotations

import argparse
import json
from typing import Any

from tqdm import tqdm

from .gc import collect_garbage
from .reader import open_cache
from .verify import verify_cache

__all__ = ["register", "format_info"]


def register(subparsers: Any) -> None:
    info = subparsers.add_parser("info", help="show a cache's model, hooks, layers, documents and sizes")
    info.add_argument("cache", help="cache folder")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=run_info)
    verify = subparsers.add_parser("verify", help="check every checksum and commit record of a cache")
    verify.add_argument("cache", help="cache folder")
    verify.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    verify.set_defaults(func=run_verify)
    gc = subparsers.add_parser("gc", help="delete segments left uncommitted by crashed writers")
    gc.add_argument("cache", help="cache folder")
    gc.add_argument("--older-than", type=float, default=3600.0, metavar="SECONDS",
                    help="only segments untouched this long (protects running writers; default 3600)")
    gc.add_argument("--dry-run", action="store_true", help="list, do not delete")
    gc.set_defaults(func=run_gc)


def format_info(info: dict[str, Any]) -> str:
    ratio = info["compression_ratio"]
    hooks = ", ".join(f"{h} [{info['widths'][h]}]" for h in info["hooks"])
    lines = [
        f"cache        {info['path']}",
        f"model        {info['model'].get('name') or info['model'].get('architecture', '?')} "
        f"(fingerprint {info['model_digest']})",
        f"dtype        {info['dtype']}",
        f"hooks        {hooks}",
        f"layers       {', '.join(map(str, info['layers']))}",
        f"documents    {info['documents']} ({info['truncated_documents']} truncated to {info['max_length']} tokens)",
        f"tokens       {info['tokens']} in {info['units']} committed units",
        f"on disk      {info['bytes_on_disk'] / 2**20:.1f} MiB "
        f"(activations {info['activation_bytes_stored'] / 2**20:.1f} MiB, "
        f"raw {info['activation_bytes_raw'] / 2**20:.1f} MiB, "
        f"compression {'n/a' if ratio is None else f'{ratio:.2f}x'})",
    ]
    if info["uncommitted_segments"]:
        lines.append(f"uncommitted  {info['uncommitted_segments']} segment(s) left by interrupted writers (invisible)")
    return "\n".join(lines)


def run_info(args: argparse.Namespace) -> int:
    info = open_cache(args.cache).info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    cache = open_cache(args.cache)  # also refuses a path that is not a cache, before the bar starts
    total = sum(m.n_chunks for record in cache.commit_records() for m in record.arrays.values())
    with tqdm(total=total, unit="chunk", desc="verify", disable=args.no_progress, dynamic_ncols=True) as bar:
        report = verify_cache(args.cache, progress=bar.update)
    if report.ok:
        print(f"ok: {report.units} units, {report.documents} documents, {report.chunks} chunks verified")
        return 0
    print(f"CORRUPT: {len(report.problems)} problem(s) in {args.cache}")
    for problem in report.problems:
        docs = f"; documents: {', '.join(problem.documents)}" if problem.documents else ""
        print(f"  {problem.where}: {problem.message}{docs}")
    return 1


def run_gc(args: argparse.Namespace) -> int:
    removed = collect_garbage(args.cache, args.older_than, args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {len(removed)} uncommitted segment(s)" + (f": {', '.join(removed)}" if removed else ""))
    return 0
