"""`actcache ls ROOT`: the caches under a folder or bucket prefix, described from their manifests alone.

A lab's caches hold millions of chunk objects, so nothing here lists a cache's chunks or segments: a cache is found
by delimiter listings (`StorageBackend.list_dirs`, one request per folder) and described by its root `zarr.json`
header, its newest snapshot manifest plus the few commit records not yet folded (storage/snapshots.py), and its
tags. Sizes come from the commit records' per-array `bytes`; a cache with records written before that field
reports its size as unknown rather than listing chunks to find it.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backends.backend import StorageBackend

__all__ = ["MAX_DEPTH", "describe_cache", "find_caches", "list_caches", "register"]

MAX_DEPTH = 3  # folders below ROOT searched for caches (a cache's own folders are never entered)
THREADS = 16  # caches described at once: each is a handful of small requests, mostly waiting on the network


def register(subparsers: Any) -> None:
    ls = subparsers.add_parser("ls", help="list the caches under a folder or s3:// prefix (from manifests only)")
    ls.add_argument("root", help="folder or s3://bucket/prefix holding caches (searched 3 levels down)")
    ls.add_argument("--json", action="store_true", help="print a JSON list, one object per cache")
    ls.add_argument("--model", metavar="M", help="only caches of this model: its name, or a prefix of its digest")
    ls.set_defaults(func=run_ls)


def list_caches(root: str, model: str | None = None, depth: int = MAX_DEPTH) -> list[dict[str, Any]]:
    """One description per cache under `root` (a folder or s3:// URL), sorted by name; `model` keeps the caches
    whose model name equals it (case-insensitive) or whose model digest starts with it."""
    from .backends.backend_url import open_backend

    backend = open_backend(root)
    with ThreadPoolExecutor(THREADS, thread_name_prefix="actcache-ls") as pool:
        headers = find_caches(backend, depth, pool)
        entries = list(pool.map(lambda item: describe_cache(_cache_backend(backend, item[0]), item[0], item[1]),
                                headers.items()))
    if model is not None:
        wanted = model.lower()
        entries = [e for e in entries if (e["model"]["name"] or "").lower() == wanted
                   or e["model"]["digest"].startswith(wanted)]
    return sorted(entries, key=lambda e: e["name"])


def find_caches(backend: StorageBackend, depth: int, pool: ThreadPoolExecutor) -> dict[str, dict[str, Any]]:
    """Folder prefix ("" for the root itself) -> the `actcache` header of every cache down to `depth` levels.

    A folder whose `zarr.json` carries the header is a cache and is not entered; any other folder is listed with
    one delimiter request. Each level's folders are probed in parallel.
    """
    found: dict[str, dict[str, Any]] = {}
    level = [""]
    for remaining in range(depth, -1, -1):
        headers = list(pool.map(lambda prefix: _header(backend, prefix), level))
        found.update({prefix: header for prefix, header in zip(level, headers, strict=True) if header is not None})
        if remaining == 0:
            break
        others = [prefix for prefix, header in zip(level, headers, strict=True) if header is None]
        level = [child for children in pool.map(backend.list_dirs, others) for child in children]
    return found


def describe_cache(backend: StorageBackend, prefix: str, header: dict[str, Any]) -> dict[str, Any]:
    """What `ls` shows of the cache at `prefix` of the listed root (`backend`: that cache): identity and capture
    from the header, contents from the newest snapshot."""
    from .errors import CacheError
    from .fingerprint import CacheFingerprint
    from .snapshots import SnapshotLog

    fingerprint = CacheFingerprint.from_dict(header["fingerprint"])
    source = header.get("model_source") or {}
    entry: dict[str, Any] = {
        "name": prefix.rstrip("/") or ".",
        "url": backend.url,
        "model": {"name": source.get("name"), "digest": fingerprint.model_digest[:16]},
        "cache_fingerprint": fingerprint.digest[:16],
        "dtype": fingerprint.dtype,
        "store_as": fingerprint.capture.store_as,
        "hooks": list(fingerprint.capture.hooks),
        "layers": list(fingerprint.capture.layers),
    }
    log = SnapshotLog(backend)
    try:
        snapshot = log.current()
        tags = [tag.name for tag in log.tags()]
    except (CacheError, ValueError, KeyError) as error:  # a damaged manifest: say so on this line, list the rest
        return {**entry, "error": str(error)}
    index = snapshot.index
    sizes = [m.bytes for r in snapshot.records for m in r.arrays.values()]
    return {
        **entry,
        "units": len(snapshot.records),
        "documents": index.n_documents,
        "tokens": index.n_tokens,
        "bytes": None if None in sizes else sum(s for s in sizes if s is not None),  # None: records predate it
        "tags": tags,
        "last_commit": max((r.created for r in snapshot.records), default=None),
    }


def _header(backend: StorageBackend, prefix: str) -> dict[str, Any] | None:
    """The `actcache` header of the cache at `prefix`, or None when that folder is not a cache."""
    try:
        metadata = json.loads(backend.get(f"{prefix}zarr.json"))
    except (FileNotFoundError, ValueError):
        return None
    header = metadata.get("attributes", {}).get("actcache") if isinstance(metadata, dict) else None
    return header if isinstance(header, dict) and "fingerprint" in header else None


def _cache_backend(root: StorageBackend, prefix: str) -> StorageBackend:
    """The cache at `prefix` of `root`, through root's client (a new S3 client per cache would cost more than
    reading the cache's manifests)."""
    from .backends.subfolder import SubfolderBackend

    return SubfolderBackend(root, prefix) if prefix else root


def format_table(entries: list[dict[str, Any]]) -> str:
    """One line per cache, columns aligned."""
    head = ["NAME", "MODEL", "DTYPE", "HOOKS", "LAYERS", "DOCS", "TOKENS", "SIZE", "TAGS", "LAST COMMIT (UTC)"]
    rows = [head]
    for e in entries:
        model = f"{e['model']['name'] or '?'} {e['model']['digest'][:8]}"
        dtype = e["dtype"] + ("" if e["store_as"] == "exact" else f"->{e['store_as']}")
        if "error" in e:
            rows.append([e["name"], model, dtype, ",".join(e["hooks"]), _layers(e["layers"]), "-", "-", "-", "-",
                         f"unreadable: {e['error']}"])
            continue
        size = "unknown" if e["bytes"] is None else _size(e["bytes"])
        when = "-" if e["last_commit"] is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(e["last_commit"]))
        rows.append([e["name"], model, dtype, ",".join(e["hooks"]), _layers(e["layers"]), str(e["documents"]),
                     str(e["tokens"]), size, ",".join(e["tags"]) or "-", when])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _layers(layers: list[int]) -> str:
    return ",".join(map(str, layers)) if len(layers) <= 4 else f"{layers[0]}..{layers[-1]} ({len(layers)})"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def run_ls(args: argparse.Namespace) -> int:
    entries = list_caches(args.root, args.model)
    if args.json:
        print(json.dumps(entries, indent=2))
    elif entries:
        print(format_table(entries))
    else:
        which = f" of model {args.model}" if args.model else ""
        print(f"no caches{which} under {args.root} (searched {MAX_DEPTH} folder levels down)")
    return 0
