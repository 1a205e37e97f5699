"""A folder of another backend as a backend of its own, sharing the parent's client.

Opening an S3 backend builds an HTTP client (~40-60 ms of CPU here, most of it loading TLS roots); a command that
visits many caches under one root (`actcache ls`) opens the root once and views each cache through this class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .backend import ObjectInfo, StorageBackend, check_key

if TYPE_CHECKING:
    from zarr.abc.store import Store

__all__ = ["SubfolderBackend"]


class SubfolderBackend(StorageBackend):
    """The objects under `folder/` of `parent`; keys are relative to that folder, as for any backend."""

    def __init__(self, parent: StorageBackend, folder: str) -> None:
        self.parent = parent
        self.folder = check_key(folder.rstrip("/"))
        self._prefix = f"{self.folder}/"

    @property
    def url(self) -> str:
        return f"{self.parent.url.rstrip('/')}/{self.folder}"

    def get(self, key: str) -> bytes:
        return self.parent.get(self._key(key))

    def read_into(self, key: str, buffer: memoryview) -> int:
        return self.parent.read_into(self._key(key), buffer)

    def put(self, key: str, data: bytes) -> None:
        self.parent.put(self._key(key), data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self.parent.put_if_absent(self._key(key), data)

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        return self.parent.get_versioned(self._key(key))

    def put_if_version(self, key: str, data: bytes, version: str) -> str | None:
        return self.parent.put_if_version(self._key(key), data, version)

    def put_unpublished(self, key: str, data: bytes) -> None:
        self.parent.put_unpublished(self._key(key), data)

    def sync(self, prefix: str) -> None:
        self.parent.sync(self._prefix + prefix)

    def list_info(self, prefix: str, start_after: str = "") -> dict[str, ObjectInfo]:
        after = self._prefix + start_after if start_after else ""
        return {key[len(self._prefix):]: info
                for key, info in self.parent.list_info(self._prefix + prefix, after).items()}

    def list_dirs(self, prefix: str = "") -> list[str]:
        return [key[len(self._prefix):] for key in self.parent.list_dirs(self._prefix + prefix)]

    def delete(self, key: str) -> None:
        self.parent.delete(self._key(key))

    def size(self, key: str) -> int:
        return self.parent.size(self._key(key))

    def zarr_store(self, path: str = "", *, read_only: bool = True) -> Store:
        return self.parent.zarr_store(self._key(path) if path else self.folder, read_only=read_only)

    def _key(self, key: str) -> str:
        return self._prefix + check_key(key)
