"""Commit records: the one place where a unit of work becomes visible, written last and atomically.

The same put-if-absent folder of JSON records also holds claims (storage/claims.py), which add an atomic
replace (renewing a lease) and an atomic take (breaking an expired one).
"""

from __future__ import annotations

import json
import os
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from .atomic_dir import TEMP_MARK
from .backends.local import LocalBackend
from .durable import fsync_dir

__all__ = ["CommitLog", "LocalCommitLog"]


class CommitLog(ABC):
    """Put-if-absent JSON records. A second commit of the same unit loses, so no unit is ever committed twice."""

    @abstractmethod
    def put_if_absent(self, name: str, record: dict[str, Any]) -> bool:
        """Write `record` under `name` atomically; False when a record of that name already exists."""

    @abstractmethod
    def names(self) -> list[str]:
        """Names of every committed record, sorted."""

    @abstractmethod
    def get(self, name: str) -> dict[str, Any]: ...

    @abstractmethod
    def replace(self, name: str, record: dict[str, Any]) -> None:
        """Overwrite (or create) `name` atomically: a reader sees the old record or the new one, never a mix."""

    @abstractmethod
    def take(self, name: str) -> dict[str, Any] | None:
        """Remove `name` atomically and return what it held; None when it is gone (someone else took it)."""


class LocalCommitLog(CommitLog):
    """A folder on a local or shared POSIX disk, published through `LocalBackend`: write a temp file, fsync, then
    hard-link it into place (exclusive: `link` fails when the target exists) or rename it over (replace), then
    fsync the folder, so a published record survives a power loss.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._files = LocalBackend(folder)

    def put_if_absent(self, name: str, record: dict[str, Any]) -> bool:
        return self._files.put_if_absent(name, _encode(record))

    def replace(self, name: str, record: dict[str, Any]) -> None:
        self._files.put(name, _encode(record))

    def take(self, name: str) -> dict[str, Any] | None:
        aside = self.folder / f"{TEMP_MARK}taken-{uuid.uuid4().hex}.json"
        try:
            os.rename(self.folder / name, aside)  # atomic: of two takers, one gets the record, the other ENOENT
        except FileNotFoundError:
            return None
        try:
            return dict(json.loads(aside.read_text()))
        finally:
            aside.unlink()
            fsync_dir(self.folder)

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir() if p.suffix == ".json" and not p.name.startswith("."))

    def get(self, name: str) -> dict[str, Any]:
        return json.loads((self.folder / name).read_text())


def _encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True).encode()
