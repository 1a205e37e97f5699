"""Where a cache's objects live: one small interface, one implementation per kind of store.

`open_backend(url)` picks the implementation: a path is a `LocalBackend` (POSIX disk), `s3://bucket/prefix` an
`ObjectStoreBackend` (obstore; endpoint and credentials from the standard AWS_* variables). Both pass the same
conformance tests (tests/storage/backend_conformance.py); docs/STORAGE-BACKENDS.md says why obstore.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the exports; at run time each is imported on first use (actcache/_lazy.py)
    from .backend import StorageBackend
    from .backend_url import open_backend
    from .local import LocalBackend
    from .object_store import ObjectStoreBackend
else:
    from actcache._lazy import lazy_exports

    __getattr__, __dir__ = lazy_exports(__name__, __file__)

__all__ = ["LocalBackend", "ObjectStoreBackend", "StorageBackend", "open_backend"]
