"""Folders of JSON records in a cache (commits, claims, annotations), published through the cache's backend.

A commit record is the one place where a unit of work becomes visible: written last, exactly once (`put_if_absent`,
so no unit is ever committed twice). Claims add a compare-and-swap (`replace_if_version`) to renew a lease and to
take an expired one over; the same operations run on a POSIX disk and on S3 (storage/backends/).
"""

from __future__ import annotations

import json
from typing import Any

from .backends.backend import StorageBackend

__all__ = ["CommitLog"]


class CommitLog:
    """The records under `folder` of `backend`: named `<name>.json`, each a JSON object."""

    def __init__(self, backend: StorageBackend, folder: str) -> None:
        self.backend = backend
        self.folder = folder

    def put_if_absent(self, name: str, record: dict[str, Any]) -> bool:
        """Write `record` under `name` atomically; False when a record of that name already exists."""
        return self.backend.put_if_absent(self._key(name), _encode(record))

    def replace(self, name: str, record: dict[str, Any]) -> None:
        """Overwrite (or create) `name` atomically: a reader sees the old record or the new one, never a mix."""
        self.backend.put(self._key(name), _encode(record))

    def replace_if_version(self, name: str, record: dict[str, Any], version: str) -> str | None:
        """Overwrite `name` only if it is still at `version` (from `get_versioned`); the new version, else None."""
        return self.backend.put_if_version(self._key(name), _encode(record), version)

    def delete(self, name: str) -> None:
        self.backend.delete(self._key(name))

    def names(self) -> list[str]:
        """Names of every record, sorted (records in sub-folders are not this log's)."""
        return self.names_with_suffix((".json",))

    def names_with_suffix(self, suffixes: tuple[str, ...]) -> list[str]:
        """Names of the objects of this folder that end with one of `suffixes`, sorted (one listing)."""
        prefix = f"{self.folder}/"
        return [key[len(prefix):] for key in self.backend.list_prefix(prefix)
                if key.endswith(suffixes) and "/" not in key[len(prefix):]]

    def get(self, name: str) -> dict[str, Any]:
        """The record; FileNotFoundError when there is none."""
        return dict(json.loads(self.backend.get(self._key(name))))

    def get_versioned(self, name: str) -> tuple[dict[str, Any], str]:
        data, version = self.backend.get_versioned(self._key(name))
        return dict(json.loads(data)), version

    def _key(self, name: str) -> str:
        return f"{self.folder}/{name}"


def _encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True).encode()
