"""A cache location as the user writes it (a path, or `s3://bucket/prefix`) -> the backend that serves it."""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

from ..errors import CacheError
from .backend import StorageBackend, check_key

__all__ = ["open_backend"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def open_backend(url: str | os.PathLike[str]) -> StorageBackend:
    """`s3://bucket/prefix` -> ObjectStoreBackend; any path (str or PathLike) -> LocalBackend.

    Other schemes are refused rather than read as a folder named `gs:`.
    """
    text = os.fspath(url)
    scheme = _SCHEME.match(text)
    if scheme is None:
        from .local import LocalBackend

        return LocalBackend(text)
    if scheme.group(1).lower() != "s3":
        raise CacheError(f"unsupported storage URL {text!r}: use a local path or s3://bucket/prefix")
    parts = urlsplit(text)
    prefix = parts.path.strip("/")
    if not parts.netloc or "@" in parts.netloc or parts.query or parts.fragment or not _is_prefix(prefix):
        raise CacheError(f"invalid S3 URL {text!r}: write s3://bucket/prefix (endpoint and keys go in AWS_* variables)")
    from .object_store import ObjectStoreBackend

    return ObjectStoreBackend(parts.netloc, prefix)


def _is_prefix(prefix: str) -> bool:
    try:
        return not prefix or check_key(prefix) == prefix
    except CacheError:
        return False
