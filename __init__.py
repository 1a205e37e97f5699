"""actcache: run a frozen LLM once, keep its activations in a zarr cache, analyse them without the model.

`from actcache import open_cache` is the entry point for reading. The packages install under this name
(`actcache.storage`, `actcache.cache_builder`, `actcache.cluster`, `actcache.solvers`) from the folders of the same
name beside this file; nothing heavy is imported until it is used, so the command line starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the exports; at run time each is imported on first use (actcache/_lazy.py)
    from .storage import CacheReader, open_cache
else:
    from actcache._lazy import lazy_exports  # absolute: pytest may import this file as the checkout folder's name

    __getattr__, __dir__ = lazy_exports(__name__, __file__)

__all__ = ["CacheReader", "open_cache"]
