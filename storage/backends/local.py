"""A folder on a local or shared POSIX disk: temp file + fsync, then `rename` (put) or exclusive `link` (create).

`link` fails when the target exists, which makes `put_if_absent` both atomic and exclusive across processes and
machines sharing the disk (NFS included); the folder is fsynced afterwards, so a published object survives a
power loss. Temp files are hidden (`.tmp-*`, `TEMP_MARK`): never listed, and `gc` removes those a killed
writer left.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..atomic_dir import TEMP_MARK
from ..durable import fsync_dir
from .backend import StorageBackend, check_key, check_prefix

if TYPE_CHECKING:
    from zarr.abc.store import Store

__all__ = ["LocalBackend"]


class LocalBackend(StorageBackend):
    """Objects as files under `root`; keys are their paths relative to it."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def url(self) -> str:
        return str(self.root)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (IsADirectoryError, NotADirectoryError):  # `a` when `a/b` exists: a bucket has no object `a` either
            raise self._missing(key) from None

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = _write_temp(path.parent, data)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        fsync_dir(path.parent)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        tmp = _write_temp(path.parent, data)
        try:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            fsync_dir(path.parent)
            return True
        finally:
            os.unlink(tmp)

    def list_prefix(self, prefix: str) -> list[str]:
        folder = self.root / check_prefix(prefix).rpartition("/")[0]
        keys = []
        for parent, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith(TEMP_MARK)]
            base = Path(parent).relative_to(self.root).as_posix()
            for name in files:
                key = name if base == "." else f"{base}/{name}"
                if key.startswith(prefix) and not name.startswith(TEMP_MARK):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def size(self, key: str) -> int:
        try:
            status = self._path(key).stat()
        except NotADirectoryError:
            raise self._missing(key) from None
        if stat.S_ISDIR(status.st_mode):
            raise self._missing(key)
        return status.st_size

    def zarr_store(self, path: str = "", *, read_only: bool = True) -> Store:
        import zarr

        root = self.root / check_key(path) if path else self.root
        return zarr.storage.LocalStore(root, read_only=read_only)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _missing(self, key: str) -> FileNotFoundError:
        return FileNotFoundError(f"no object {key!r} under {self.root}")


def _write_temp(folder: Path, data: bytes) -> str:
    """`data` in a fsynced hidden temp file of `folder` (same folder as the target, so rename and link are atomic)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_MARK)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp
