"""The cache's root group: format version and fingerprint, read and written in one place."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import zarr

from .errors import CacheError, FingerprintMismatchError, NotACacheError
from .fingerprint import CacheFingerprint, canonical_json
from .layout import FORMAT_VERSION, ROOT_ATTR

__all__ = ["open_root", "create_root", "check_same_fingerprint", "child_array", "child_group"]


def open_root(path: str | Path, mode: Literal["r", "r+"] = "r") -> tuple[zarr.Group, CacheFingerprint]:
    """Open an existing cache; NotACacheError (with the fix) for anything else."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise NotACacheError(f"{path} is not an actcache cache (no zarr.json): give the --out folder of a build")
    try:
        group = zarr.open_group(zarr.storage.LocalStore(str(path), read_only=mode == "r"), mode=mode)
    except Exception as error:  # zarr raises several kinds for unreadable metadata
        raise NotACacheError(f"{path} is not a readable zarr group ({error}): give the --out folder of a build") \
            from error
    header = group.attrs.get(ROOT_ATTR)
    if not isinstance(header, dict) or "fingerprint" not in header:
        raise NotACacheError(f"{path} is a zarr group but not an actcache cache: give the --out folder of a build")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise NotACacheError(f"{path} has cache format {version}; this actcache reads format {FORMAT_VERSION}")
    return group, CacheFingerprint.from_dict(header["fingerprint"])


def create_root(path: str | Path, fingerprint: CacheFingerprint, model_source: dict[str, Any] | None = None,
                ) -> zarr.Group:
    """Create a new cache group; refuses a non-empty folder that is not a cache.

    `model_source` (where the weights were, e.g. {"path": ..., "weight_files": [...]}) is informational: solvers
    use it to find W_O / W_down; it is not part of the fingerprint, so a moved model still appends.
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise NotACacheError(f"{path} exists and is not an actcache cache: choose a new --out folder")
    store = zarr.storage.LocalStore(str(path))
    header: dict[str, Any] = {"format_version": FORMAT_VERSION, "fingerprint": fingerprint.to_dict(),
                              "model_source": model_source}
    return zarr.open_group(store, mode="w-", attributes={ROOT_ATTR: header})


def check_same_fingerprint(path: str | Path, cached: CacheFingerprint, wanted: CacheFingerprint) -> None:
    """Refuse to mix activations: name every field that differs, with both values."""
    fields = cached.differences(wanted)
    if not fields:
        return
    old, new = cached.to_dict(), wanted.to_dict()
    shown = "; ".join(f"{f} (cache: {_short(_at(old, f))}, now: {_short(_at(new, f))})" for f in fields[:4])
    more = f" and {len(fields) - 4} more" if len(fields) > 4 else ""
    raise FingerprintMismatchError(
        f"{path} was built with a different {shown}{more}: build into a new --out, or rerun with the cache's settings"
    )


def _at(data: Any, dotted: str) -> Any:
    """The value at a `differences()` path; a key may hold dots itself (`model.weights.model.safetensors.sha256`)."""
    parts = dotted.split(".")
    while parts:
        if not isinstance(data, dict):
            return None
        n = next((n for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in data), 0)
        if n == 0:
            return None
        data, parts = data[".".join(parts[:n])], parts[n:]
    return data


def _short(value: Any, limit: int = 60) -> str:
    text = canonical_json(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def child_group(group: zarr.Group, path: str) -> zarr.Group:
    """A sub-group, or CacheError when the path holds something else (a damaged or foreign cache)."""
    node = group[path]
    if not isinstance(node, zarr.Group):
        raise CacheError(f"{path} is not a zarr group")
    return node


def child_array(group: zarr.Group, path: str) -> zarr.Array:
    """An array of the group, or CacheError when the path holds something else."""
    node = group[path]
    if not isinstance(node, zarr.Array):
        raise CacheError(f"{path} is not a zarr array")
    return node
