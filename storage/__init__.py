"""The actcache cache format: append-only zarr v3 groups with atomic commits (docs/FORMAT.md)."""

import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the exports; at run time each is imported on first use (actcache/_lazy.py)
    from .errors import (
        CacheError,
        CorruptCacheError,
        DiskFullError,
        FingerprintMismatchError,
        InputError,
        NonFiniteError,
        NotACacheError,
    )
    from .fingerprint import CacheFingerprint, CaptureSpec
    from .reader import CacheReader, Document, open_cache
    from .records import ArrayManifest, ArraySpec, DocRecord
    from .verify import VerifyReport, verify_cache
    from .writer import CacheWriter
else:
    from actcache._lazy import lazy_exports

    __getattr__, __dir__ = lazy_exports(__name__, __file__)

# Activation chunks use the `numcodecs.shuffle` codec, a registered zarr v3 extension that zarr-python and zarrs
# read; zarr warns about every such codec it parses, which would repeat on every array a reader opens.
warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3 specification")

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
    "InputError",
    "NonFiniteError",
    "NotACacheError",
    "VerifyReport",
    "open_cache",
    "verify_cache",
]
