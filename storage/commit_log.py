"""Commit records: the one place where a unit of work becomes visible, written last and atomically."""

from __future__ import annotations

import json
import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

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


class LocalCommitLog(CommitLog):
    """A folder on a local or shared POSIX disk: write a temp file, fsync, then hard-link it into place.

    `link` fails when the target exists, which makes the publish both atomic and exclusive.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def put_if_absent(self, name: str, record: dict[str, Any]) -> bool:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(record, handle, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, self.folder / name)
            except FileExistsError:
                return False
            return True
        finally:
            os.unlink(tmp)

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir() if p.suffix == ".json" and not p.name.startswith("."))

    def get(self, name: str) -> dict[str, Any]:
        return json.loads((self.folder / name).read_text())
