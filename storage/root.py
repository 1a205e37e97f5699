"""The cache's root group: format version and fingerprint, read and written in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import zarr

from .errors import CacheError, FingerprintMismatchError, NotACacheError
from .fingerprint import CacheFingerprint, canonical_json
from .layout import CHUNK_DIR, FORMAT_VERSION, ROOT_ATTR

if TYPE_CHECKING:
    from .backends.backend import StorageBackend

GROUP_METADATA = "zarr.json"

__all__ = ["GROUP_METADATA", "open_root", "create_root", "check_same_fingerprint", "child_array", "child_group",
           "stored_row_chunks"]


def open_root(backend: StorageBackend, mode: Literal["r", "r+"] = "r") -> tuple[zarr.Group, CacheFingerprint]:
    """Open an existing cache; NotACacheError (with the fix) for anything else. Mode "r" never writes."""
    where = backend.url
    try:
        backend.size(GROUP_METADATA)
    except FileNotFoundError:
        raise NotACacheError(f"{where} is not an actcache cache (no zarr.json): give the --out of a build") from None
    try:
        group = zarr.open_group(backend.zarr_store(read_only=mode == "r"), mode=mode)
    except Exception as error:  # zarr raises several kinds for unreadable metadata
        raise NotACacheError(f"{where} is not a readable zarr group ({error}): give the --out of a build") from error
    header = group.attrs.get(ROOT_ATTR)
    if not isinstance(header, dict) or "fingerprint" not in header:
        raise NotACacheError(f"{where} is a zarr group but not an actcache cache: give the --out of a build")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise NotACacheError(f"{where} has cache format {version}; this actcache reads format {FORMAT_VERSION}")
    return group, CacheFingerprint.from_dict(header["fingerprint"])


def create_root(backend: StorageBackend, fingerprint: CacheFingerprint, model_source: dict[str, Any] | None = None,
                ) -> bool:
    """Create the cache's root group unless one exists: True when this call created it.

    The root's metadata is published with `put_if_absent`, so of several writers started together on an empty
    location one creates it and the others find it (and join when the fingerprint is the same). A location that
    holds other things is refused. `model_source` (where the weights were, e.g. {"path": ..., "weight_files": [...]})
    is informational: solvers use it to find W_O / W_down; it is not part of the fingerprint, so a moved model
    still appends.
    """
    header: dict[str, Any] = {"format_version": FORMAT_VERSION, "fingerprint": fingerprint.to_dict(),
                              "model_source": model_source}
    if backend.list_prefix("") and not _has_root(backend):  # a writer creates the root before anything else
        raise NotACacheError(f"{backend.url} exists and is not an actcache cache: choose a new --out")
    return backend.put_if_absent(GROUP_METADATA, _group_metadata({ROOT_ATTR: header}))


def _has_root(backend: StorageBackend) -> bool:
    try:
        backend.size(GROUP_METADATA)
    except FileNotFoundError:
        return False
    return True


def _group_metadata(attributes: dict[str, Any]) -> bytes:
    """The zarr.json of a root group with `attributes`, exactly as zarr writes it."""
    written: dict[str, Any] = {}
    zarr.open_group(zarr.storage.MemoryStore(written), mode="w-", attributes=attributes)
    return bytes(written[GROUP_METADATA].to_bytes())


def check_same_fingerprint(path: str, cached: CacheFingerprint, wanted: CacheFingerprint) -> None:
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


def stored_row_chunks(backend: StorageBackend, array_key: str) -> set[int]:
    """Row-chunk indices that have a stored chunk under an array (`<key>/c/<i>/0`): one listing, no request per
    chunk."""
    prefix = f"{array_key}/{CHUNK_DIR}/"
    return {int(key[len(prefix):].split("/", 1)[0]) for key in backend.list_prefix(prefix)}
