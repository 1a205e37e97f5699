"""actcache: run a frozen LLM once, keep its activations in a zarr cache, analyse them without the model.

`from actcache import open_cache` is the entry point for reading. The packages install under this name
(`actcache.storage`, `actcache.cache_builder`, `actcache.cluster`, `actcache.solvers`) from the folders of the same
name beside this file; nothing heavy is imported until it is used, so the command line starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .storage import CacheReader, open_cache

__all__ = ["CacheReader", "open_cache"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import storage

        return getattr(storage, name)
    raise AttributeError(f"module 'actcache' has no attribute {name!r}")
