"""A folder on a local or shared POSIX disk: temp file + fsync, then `rename` (put) or exclusive `link` (create).

`link` fails when the target exists, which makes `put_if_absent` both atomic and exclusive across processes and
machines sharing the disk (NFS included); the folder is fsynced afterwards, so a published object survives a
power loss. Temp files are hidden (`.tmp-*`, `TEMP_MARK`): never listed, and `gc` removes those a killed
writer left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..atomic_dir import TEMP_MARK
from ..durable import fsync_dir, fsync_tree
from ..errors import as_write_error
from .backend import ObjectInfo, StorageBackend, check_key, check_prefix

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

    def read_into(self, key: str, buffer: memoryview) -> int:
        """Straight syscalls: Python's buffered file objects cost ~20 us per chunk object beside a ~60 us read."""
        try:
            fd = os.open(f"{self.root}/{check_key(key)}", os.O_RDONLY)  # a str: pathlib's join costs ~8 us
        except (IsADirectoryError, NotADirectoryError):
            raise self._missing(key) from None
        try:
            length = os.readv(fd, [buffer])  # a regular file gives all it has up to the buffer's size at once
            if length == len(buffer) and os.read(fd, 1):
                raise ValueError(f"object {key!r} is larger than the {len(buffer)}-byte buffer")
            return length
        except IsADirectoryError:
            raise self._missing(key) from None
        finally:
            os.close(fd)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        with self._writing(key):
            tmp = _write_temp(path.parent, data)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        fsync_dir(path.parent)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        with self._writing(key):
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

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        try:
            with open(self._path(key), "rb") as handle:
                return handle.read(), _version(os.fstat(handle.fileno()))
        except (IsADirectoryError, NotADirectoryError):
            raise self._missing(key) from None

    def put_if_version(self, key: str, data: bytes, version: str) -> str | None:
        """Move the object aside (rename is atomic: of two callers one gets it), compare, then link the new bytes
        in (exclusive) or put the old ones back.

        The new bytes are written and fsynced before the object moves aside, so the key is absent only for a
        rename, a stat and a link (microseconds): a reader or `put_if_absent` landing in that gap sees no object.
        """
        path = self._path(key)
        with self._writing(key):
            tmp = _write_temp(path.parent, data)
        aside = path.parent / f"{TEMP_MARK}swap-{uuid.uuid4().hex}"
        try:
            try:
                os.rename(path, aside)
            except (FileNotFoundError, NotADirectoryError):
                return None
            try:
                if _version(aside.stat()) != version:
                    with contextlib.suppress(FileExistsError):  # created meanwhile: that newer object stays
                        os.link(aside, path)
                    return None
                try:
                    os.link(tmp, path)
                except FileExistsError:  # someone created the key while it was aside: theirs is newer
                    return None
                new = _version(os.stat(tmp))
            finally:
                aside.unlink()
        finally:
            os.unlink(tmp)
        fsync_dir(path.parent)
        return new

    def put_unpublished(self, key: str, data: bytes) -> None:
        path = self._path(key)
        with self._writing(key):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)  # no fsync here: `sync` flushes a whole segment's files at once, before its commit

    def sync(self, prefix: str) -> None:
        folder = self.root / check_prefix(prefix).rstrip("/") if prefix else self.root
        if folder.is_dir():
            fsync_tree(folder)

    def list_info(self, prefix: str, start_after: str = "") -> dict[str, ObjectInfo]:
        folder = check_prefix(prefix).rpartition("/")[0]
        found: dict[str, ObjectInfo] = {}
        pending = [(os.path.join(self.root, folder) if folder else str(self.root), f"{folder}/" if folder else "")]
        while pending:  # plain strings and scandir: a folder of 10,000 records lists in milliseconds
            path, key_prefix = pending.pop()
            try:
                entries = list(os.scandir(path))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if entry.name.startswith(TEMP_MARK):
                    continue
                key = key_prefix + entry.name
                if entry.is_dir(follow_symlinks=False):
                    pending.append((entry.path, f"{key}/"))
                elif key.startswith(prefix) and key > start_after:
                    status = entry.stat(follow_symlinks=False)
                    found[key] = ObjectInfo(status.st_size, status.st_mtime)
        return found

    def list_dirs(self, prefix: str = "") -> list[str]:
        folder = self.root / check_prefix(prefix).rstrip("/") if prefix else self.root
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(f"{prefix}{e.name}/" for e in entries
                      if e.is_dir(follow_symlinks=False) and not e.name.startswith(TEMP_MARK))

    def delete_prefix(self, prefix: str) -> None:
        if prefix.endswith("/"):  # a whole folder: one rmtree instead of a call per file
            shutil.rmtree(self.root / check_prefix(prefix).rstrip("/"), ignore_errors=True)
        else:
            super().delete_prefix(prefix)

    def delete(self, key: str) -> None:
        with self._writing(key):
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

    @contextlib.contextmanager
    def _writing(self, key: str) -> Iterator[None]:
        """A read-only mount or missing permission as one line naming it, not an OSError traceback."""
        try:
            yield
        except OSError as error:
            raise (as_write_error(error, f"{self.root}/{key}") or error) from error

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


def _version(status: os.stat_result) -> str:
    """A file's version: a replace makes a new inode; rename and link keep inode, time and size."""
    return f"{status.st_ino}-{status.st_mtime_ns}-{status.st_size}"
