"""The actcache cache format: append-only zarr v3 groups with atomic commits (docs/FORMAT.md)."""

from .errors import CacheError, CorruptCacheError, DiskFullError, FingerprintMismatchError, NotACacheError
from .fingerprint import CacheFingerprint, CaptureSpec
from .reader import CacheReader, Document, open_cache
from .records import ArrayManifest, ArraySpec, DocRecord
from .verify import VerifyReport, verify_cache
from .writer import CacheWriter

__all__ = [
    "ArrayManifest",
    "ArraySpec",
    "CacheError",
    "CacheFingerprint",
    "CacheReader",
    "CacheWriter",
    "CaptureSpec",
    "CorruptCacheError",
    "DiskFullError",
    "DocRecord",
    "Document",
    "FingerprintMismatchError",
    "NotACacheError",
    "VerifyReport",
    "open_cache",
    "verify_cache",
]
