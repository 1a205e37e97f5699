"""The operations a cache needs from a store, and the key rules every backend shares.

Keys are `/`-separated names relative to the backend's root (`commits/000001.json`, `seg-3/resid_post.8/c/0/0`),
the same on a disk and in a bucket, so code above this layer never builds a path or a URL itself. A key is never
also the folder of other keys (`a/b` and `a/b/c` cannot both exist on a disk), as in zarr's own layout.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, NamedTuple

from ..errors import CacheError

if TYPE_CHECKING:
    from zarr.abc.store import Store

__all__ = ["ObjectInfo", "StorageBackend", "check_key", "check_prefix"]


class ObjectInfo(NamedTuple):
    size: int  # bytes
    modified: float  # unix time of the last write


class StorageBackend(ABC):
    """Whole objects under one root: read, write, publish exactly once, list, delete.

    `put` replaces atomically (a reader sees the old object or the new one, never a mix); `put_if_absent` is the
    one primitive commits and claims are built on: of any number of concurrent callers (threads, processes,
    machines) exactly one gets True and its bytes are what everyone reads afterwards.
    """

    @property
    @abstractmethod
    def url(self) -> str:
        """The root as a user writes it: a path, or `s3://bucket/prefix`."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError when there is none."""

    def read_into(self, key: str, buffer: memoryview) -> int:
        """Read the object into `buffer` and return its length (ValueError when it does not fit): readers that
        decode many chunks reuse one buffer instead of allocating a fresh object per chunk."""
        data = self.get(key)
        if len(data) > len(buffer):
            raise ValueError(f"object {key!r} has {len(data)} bytes, more than the {len(buffer)}-byte buffer")
        buffer[:len(data)] = data
        return len(data)

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write (or replace) the object atomically."""

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create the object unless it exists: True when this call created it, False when it was already there."""

    @abstractmethod
    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and a token of this version of it (S3: its ETag), for `put_if_version`."""

    @abstractmethod
    def put_if_version(self, key: str, data: bytes, version: str) -> str | None:
        """Replace the object only if it is still at `version`; the new version, or None when it changed or is gone.

        The compare-and-swap that claims are renewed and taken over with: of a stalled writer renewing and another
        taking its expired claim over, exactly one succeeds.
        """

    @abstractmethod
    def put_unpublished(self, key: str, data: bytes) -> None:
        """Write an object that nothing names yet (a chunk before its commit): durable after `sync`, not atomic."""

    @abstractmethod
    def sync(self, prefix: str) -> None:
        """Make every object under `prefix` durable before something that names them is published."""

    def list_prefix(self, prefix: str, start_after: str = "") -> list[str]:
        """Every key that starts with `prefix` (a plain string prefix: `commits/00` matches `commits/0012.json`),
        sorted; objects still being written are never listed. `start_after`: only keys strictly after it (S3's
        StartAfter: the store skips the rest, so a time-ordered folder lists only its tail)."""
        return sorted(self.list_info(prefix, start_after))

    @abstractmethod
    def list_info(self, prefix: str, start_after: str = "") -> dict[str, ObjectInfo]:
        """Every key that starts with `prefix` (and sorts strictly after `start_after`), with its size and time of
        last change (one listing, no request per object)."""

    @abstractmethod
    def list_dirs(self, prefix: str = "") -> list[str]:
        """The immediate child folders of folder `prefix` ("" or ending with `/`), as sorted keys ending with `/`
        (`a/b/`): one delimiter listing, however many objects lie below them (`actcache ls` finds caches so)."""

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under `prefix` (a folder's worth: end it with `/`)."""
        for key in self.list_prefix(prefix):
            self.delete(key)

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; removing one that is gone is not an error (two collectors may race)."""

    @abstractmethod
    def size(self, key: str) -> int:
        """The object's size in bytes; FileNotFoundError when there is none."""

    @abstractmethod
    def zarr_store(self, path: str = "", *, read_only: bool = True) -> Store:
        """A zarr store rooted at `path` under this backend's root (read-only unless asked: readers never write)."""


def check_key(key: str) -> str:
    """`key` when it names an object (non-empty `/`-separated parts, none `.` or `..`), else a CacheError.

    The same key must mean the same object on every backend: a leading `/`, `a//b` or `..` would mean different
    things (or escape the root) on a disk and in a bucket.
    """
    if not key or any(part in ("", ".", "..") for part in key.split("/")) or "\\" in key:
        raise CacheError(f"invalid storage key {key!r}: use `/`-separated names without empty, `.` or `..` parts")
    return key


def check_prefix(prefix: str) -> str:
    """`prefix` when it is "" or the start of a valid key (it may end inside a name or with `/`)."""
    if prefix:
        check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix
