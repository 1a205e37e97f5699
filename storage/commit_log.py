"""Commit records: the one place where a unit of work becomes visible, written last and atomically.

The same put-if-absent folder of JSON records also holds claims (storage/claims.py), which add an atomic
replace (renewing a lease) and an atomic take (breaking an expired one).
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from .atomic_dir import TEMP_MARK
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
    """A folder on a local or shared POSIX disk: write a temp file, fsync, then hard-link it into place.

    `link` fails when the target exists, which makes the publish both atomic and exclusive; the folder is fsynced
    after the link, so a published record survives a power loss.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def put_if_absent(self, name: str, record: dict[str, Any]) -> bool:
        tmp = self._write_temp(record)
        try:
            try:
                os.link(tmp, self.folder / name)
            except FileExistsError:
                return False
            fsync_dir(self.folder)
            return True
        finally:
            os.unlink(tmp)

    def replace(self, name: str, record: dict[str, Any]) -> None:
        tmp = self._write_temp(record)
        try:
            os.replace(tmp, self.folder / name)
        except BaseException:
            os.unlink(tmp)
            raise
        fsync_dir(self.folder)

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

    def _write_temp(self, record: dict[str, Any]) -> str:
        """The record in a fsynced temp file of the folder (hidden: `names()` skips it, `gc` removes a stale one)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=TEMP_MARK, suffix=".json")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(record, handle, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir() if p.suffix == ".json" and not p.name.startswith("."))

    def get(self, name: str) -> dict[str, Any]:
        return json.loads((self.folder / name).read_text())
