"""Building many small objects at once without the cyclic garbage collector running over and over.

Opening a cache of 100,000 documents builds 100,000 label dicts and Document tuples; each 700 new tracked objects
start a collection, and the older generations walk every object the process holds. Measured: `documents()` of
100,000 documents took 0.36-0.60 s with the collector on and 0.13-0.15 s paused (a process holding a million other
objects). Pausing leaks nothing: any cycle is collected once the collector resumes.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["gc_paused"]

P = ParamSpec("P")
R = TypeVar("R")


def gc_paused(function: Callable[P, R]) -> Callable[P, R]:
    """Run `function` with the cyclic collector paused (left as it was found: a caller that disabled it keeps that)."""

    @functools.wraps(function)
    def paused(*args: P.args, **kwargs: P.kwargs) -> R:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return function(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return paused
