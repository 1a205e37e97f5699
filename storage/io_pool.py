"""Process-wide thread pools for requests that wait on a store (fsyncs, claim requests), not on the CPU.

Starting threads per call cost as much as the work for small batches of requests; one pool per purpose and process
is kept instead, and dropped in a forked child (which has none of the parent's threads).
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

__all__ = ["io_pool"]

IO_THREADS = 16  # requests wait on the device or the network: more threads than cores let them overlap


@functools.cache
def io_pool(purpose: str) -> ThreadPoolExecutor:
    """The pool for `purpose` (one per purpose, so work of one never waits behind the other's)."""
    return ThreadPoolExecutor(IO_THREADS, thread_name_prefix=f"actcache-{purpose}")


os.register_at_fork(after_in_child=io_pool.cache_clear)
