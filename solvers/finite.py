"""One finiteness test for streamed matrices, cheap enough to run on every document."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["all_finite"]


def all_finite(x: Tensor) -> bool:
    """True when every value of `x` is finite: its float64 sum is finite exactly then (no float32, bfloat16 or
    float16 values can overflow it). Unlike `isfinite(x).all()` it allocates no per-element mask: one such mask
    per document fragmented the heap while streaming (+30 MB peak on a 300 MB cache, test_job_memory.py)."""
    return bool(torch.isfinite(x.sum(dtype=torch.float64)))
