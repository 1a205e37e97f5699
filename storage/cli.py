"""`actcache info` and `actcache verify`: what a cache holds, and whether every byte of it is intact."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

__all__ = ["register", "format_info"]


def register(subparsers: Any) -> None:
    info = subparsers.add_parser("info", help="show a cache's model, hooks, layers, documents and sizes")
    info.add_argument("cache", help="cache folder or s3://bucket/prefix")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=run_info)
    verify = subparsers.add_parser("verify", help="check every checksum and commit record of a cache")
    verify.add_argument("cache", help="cache folder or s3://bucket/prefix")
    verify.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    verify.set_defaults(func=run_verify)
    gc = subparsers.add_parser("gc", help="delete segments and temp files left by crashed writers")
    gc.add_argument("cache", help="cache folder or s3://bucket/prefix")
    gc.add_argument("--older-than", type=float, default=3600.0, metavar="SECONDS",
                    help="segments no writer claims (written by an older actcache): only those untouched this long; "
                         "a claimed segment is kept while its writer's lease is renewed")
    gc.add_argument("--dry-run", action="store_true", help="list, do not delete")
    gc.set_defaults(func=run_gc)
    tag = subparsers.add_parser("tag", help="pin the cache's current state under a name (reproducible reads)")
    tag.add_argument("cache", help="cache folder or s3://bucket/prefix")
    tag.add_argument("name", help="the tag: letters, digits, _ . - (a tag never moves)")
    tag.set_defaults(func=run_tag)
    compact = subparsers.add_parser("compact", help="fold commit records into a snapshot manifest (fast opening)")
    compact.add_argument("cache", help="cache folder or s3://bucket/prefix")
    compact.set_defaults(func=run_compact)
    from .stats_command import register as register_stats

    register_stats(subparsers)
    from .catalog import register as register_catalog

    register_catalog(subparsers)
    from .cache_copy import register as register_copy

    register_copy(subparsers)


def format_info(info: dict[str, Any]) -> str:
    ratio = info["compression_ratio"]
    hooks = ", ".join(f"{h} [{info['widths'][h]}]" for h in info["hooks"])
    model = info["model"]
    name = model["name"] or "?"
    lines = [
        f"cache        {info['path']}",
        f"model        {name}" + (f" ({model['architecture']})" if model["architecture"] else "")
        + f", digest {model['digest']} (weights + config)",
        f"capture      hooks {hooks}",
        f"             layers {', '.join(map(str, info['layers']))}",
        f"             {info['dtype']}, up to {info['max_length']} tokens ({info['truncation_side']} truncation)"
        + ("" if info.get("store_as", "exact") == "exact" else f", stored as {info['store_as']} (lossy)"),
        f"fingerprint  {info['cache_fingerprint']} (model + tokenizer + dtype + capture: an append must match it)",
        f"documents    {info['documents']} ({info['truncated_documents']} truncated to {info['max_length']} tokens)"
        + (f", {info['duplicate_documents']} stored twice (readers use the first)" if info["duplicate_documents"]
           else ""),
        *_label_lines(info["label_fields"]),
        f"tokens       {info['tokens']} in {info['units']} committed units",
        f"on disk      {info['bytes_on_disk'] / 2**20:.1f} MiB "
        f"(committed activations {info['activation_bytes_stored'] / 2**20:.1f} MiB, "
        f"raw {info['activation_bytes_raw'] / 2**20:.1f} MiB, "
        f"compression {'n/a' if ratio is None else f'{ratio:.2f}x'})",
    ]
    measured = {name: error for name, error in info.get("lossy_error", {}).items() if "rel_l2_mean" in error}
    for i, (name, error) in enumerate(measured.items()):  # per token, against the exact values, over all commits
        lines.append(f"{'lossy error' if i == 0 else '':<13}{name}: rel. L2 "
                     f"mean {error['rel_l2_mean']:.2e}, p99 {error['rel_l2_p99']:.2e}, max "
                     f"{error['rel_l2_max']:.2e}; cosine min {error['cosine_min']:.6f}, mean "
                     f"{error['cosine_mean']:.6f}")
    if info["uncommitted_segments"]:
        lines.append(f"uncommitted  {info['uncommitted_segments']} segment(s), "
                     f"{info['uncommitted_bytes'] / 2**20:.1f} MiB, being written or left by interrupted writers "
                     f"(invisible; `actcache gc` removes the latter)")
    snapshot = info["snapshot"]
    lines.append(f"snapshot     {snapshot['sequence'] or 'none yet'}"
                 + (f" + {snapshot['unfolded_commits']} newer commit(s) (`actcache compact` folds them)"
                    if snapshot["unfolded_commits"] else "") + (f", read at tag {snapshot['tag']}" if snapshot["tag"]
                                                                 else ""))
    for tag in info["tags"]:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(tag["created"]))
        lines.append(f"tag          {tag['name']}: snapshot {tag['snapshot']}, labels v{tag['annotation_version']}, "
                     f"{when}")
    for version in info.get("annotation_versions", []):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(version["created"]))
        lines.append(f"labels v{version['version']:<4} {when}  {version['documents']} document(s) relabelled from "
                     f"{version['source']}")
    return "\n".join(lines)


def _label_lines(fields: dict[str, dict[str, Any]]) -> list[str]:
    """One line per label field: its most common values with counts, and how many others."""
    lines = []
    for i, (name, field) in enumerate(fields.items()):
        shown = ", ".join(f"{value} ({n})" for value, n in field["most_common"])
        others = field["distinct"] - len(field["most_common"])
        lines.append(f"{'labels' if i == 0 else '':<13}{name}: {shown}" + (f" and {others} more" if others else "")
                     + f" in {field['documents']} documents")
    return lines or ["labels       none"]


def run_info(args: argparse.Namespace) -> int:
    from .reader import open_cache

    info = open_cache(args.cache).info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .reader import open_cache
    from .verify import verify_cache

    cache = open_cache(args.cache, annotations=0)  # refuses a non-cache before the bar; labels are verified below
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


def run_tag(args: argparse.Namespace) -> int:
    from .backends import open_backend
    from .reader import open_cache
    from .snapshots import SnapshotLog

    open_cache(args.cache)  # refuses what is not a cache
    tag = SnapshotLog(open_backend(args.cache)).tag(args.name)
    cache = open_cache(args.cache, tag=tag.name)
    print(f"tagged {args.cache} as {tag.name}: snapshot {tag.snapshot}, {cache.n_documents} documents, "
          f"{cache.n_tokens} tokens, labels v{tag.annotation_version}; read it with --tag {tag.name} or "
          f"open_cache(..., tag={tag.name!r})")
    return 0


def run_compact(args: argparse.Namespace) -> int:
    from .backends import open_backend
    from .reader import open_cache
    from .snapshots import SnapshotLog

    open_cache(args.cache)  # refuses what is not a cache
    log = SnapshotLog(open_backend(args.cache))
    before = log.current().unfolded
    state = log.fold()
    pruned = log.prune()
    markers = log.prune_journal()
    print(f"snapshot {state.sequence}: {len(state.records)} commits ({before} newly folded); removed "
          f"{len(pruned)} older untagged manifest(s) and {markers} old journal marker(s)")
    return 0


def run_gc(args: argparse.Namespace) -> int:
    from .gc import collect_garbage

    report = collect_garbage(args.cache, args.older_than, args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {len(report.segments)} uncommitted segment(s)"
          + (f": {', '.join(report.segments)}" if report.segments else ""))
    if report.temp_files:
        print(f"{verb} {len(report.temp_files)} temp file(s) of killed writers: {', '.join(report.temp_files)}")
    if report.claims:
        print(f"{verb} {len(report.claims)} expired claim(s) of segments never created: {', '.join(report.claims)}")
    if report.document_claims:
        print(f"{verb} {len(report.document_claims)} expired document claim(s) of dead writers: "
              f"{', '.join(report.document_claims)}")
    for segment, reason in report.kept.items():
        print(f"kept {segment}: {reason}")
    return 0
