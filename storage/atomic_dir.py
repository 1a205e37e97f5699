"""Write a folder completely or not at all: fill a hidden temporary sibling, then rename it into place.

The one temp-folder-then-rename helper of the project (solve and sweep outputs, readouts, built models). The
temporary name is `.<name>.tmp-<pid>` (`TEMP_MARK`), so a folder left by a killed writer is recognisable.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["TEMP_MARK", "atomic_dir", "temp_sibling"]

TEMP_MARK = ".tmp-"


def temp_sibling(path: Path, mark: str = TEMP_MARK) -> Path:
    """The hidden sibling `.<name><mark><pid>` of `path` (same folder, so a rename is atomic)."""
    return path.with_name(f".{path.name}{mark}{os.getpid()}")


@contextmanager
def atomic_dir(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder; when the block succeeds it becomes `path`, else it is removed.

    `path` must not exist unless `overwrite` (callers check first and refuse with a user-facing message; this
    is the last guard). With `overwrite` the old folder is renamed aside, the new one renamed in, and only
    then is the old one deleted: at every moment `path` is either the old complete folder, absent for the
    instant between two renames, or the new complete folder.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists and overwrite was not asked for")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            old = temp_sibling(path, ".old-")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            try:
                tmp.rename(path)
            except BaseException:
                old.rename(path)
                raise
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
