"""Exceptions of the cache format. Each message names the problem and the fix."""

from __future__ import annotations

import errno

__all__ = [
    "InputError",
    "CacheError",
    "NotACacheError",
    "FingerprintMismatchError",
    "CorruptCacheError",
    "NonFiniteError",
    "DiskFullError",
    "WriteDeniedError",
    "as_write_error",
]


class InputError(ValueError):
    """Base of every error that is the user's input, not our bug: the command line prints it as one line.

    Every package's input errors derive from it (it lives here, at the bottom of the import graph); anything else
    that escapes a command is a bug and shows its traceback.
    """


class CacheError(InputError):
    """Base of every storage error."""


class NotACacheError(CacheError):
    """The path holds no actcache cache (or an unsupported format version)."""


class FingerprintMismatchError(CacheError):
    """An append would mix activations of a different model, tokenizer, dtype or capture spec."""


class CorruptCacheError(CacheError):
    """A checksum or commit record does not hold."""


class NonFiniteError(CacheError):
    """Values read for an analysis are NaN or infinite: damage a checksum cannot see, or a model overflow."""


class DiskFullError(CacheError):
    """The store ran out of space; committed work is intact and the build can resume."""


class WriteDeniedError(CacheError):
    """The location is read-only to this process: a command that adds to the cache needs write permission there."""


_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_WRITE_DENIED_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def as_write_error(error: BaseException, where: str) -> CacheError | None:
    """The one-line error for an OSError of a write that the user can fix (no space left, no write permission),
    else None (anything else keeps its traceback)."""
    if not isinstance(error, OSError):
        return None
    if error.errno in _DISK_FULL_ERRNOS:
        return DiskFullError(f"disk full while writing {where} ({error.strerror}): free space and rerun the same "
                             "command; committed documents are intact and the build resumes")
    if error.errno in _WRITE_DENIED_ERRNOS:
        return WriteDeniedError(f"cannot write {where} ({error.strerror}): this command adds to the cache, so it "
                                "needs write permission there; reading commands need none")
    return None
