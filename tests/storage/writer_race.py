"""Writer processes started together on one location: each opens the cache (creating it if it is not there),
writes one unit and closes. Shared by the tests of concurrent writers (spawned: the function must be importable)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np
from actcache.storage import CacheWriter, InputError
from storage_fixtures import WrittenCache, make_fingerprint, write_unit

__all__ = ["start_writers_together"]


def _open_and_write(url: str, writer: int, layers: tuple[int, ...], barrier: Any, results: Any) -> None:
    barrier.wait(timeout=60)
    try:
        with CacheWriter.open(url, make_fingerprint(layers=layers)) as cache:
            write_unit(cache, f"unit-{writer}", [3, 5], np.random.default_rng(writer),
                       WrittenCache(Path(url), [], {}, {}))
        results.put((writer, "ok"))
    except InputError as error:
        results.put((writer, str(error)))


def start_writers_together(url: str, layers: list[tuple[int, ...]]) -> dict[int, str]:
    """One process per entry of `layers` (its fingerprint's layers), all opening `url` at once: writer -> "ok" or
    the one-line error it got."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(len(layers)), context.Queue()
    processes = [context.Process(target=_open_and_write, args=(url, i, lay, barrier, results))
                 for i, lay in enumerate(layers)]
    for process in processes:
        process.start()
    try:
        return dict(results.get(timeout=120) for _ in processes)
    finally:
        for process in processes:
            process.join(timeout=30)
