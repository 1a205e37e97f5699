"""Bytes a capture produces: per token, for a corpus, per second.

Values are stored losslessly in the capture dtype, so a token costs the sum of its captured widths times the dtype
size. Lossless zstd on the raw bits buys little (mantissa bits are close to random); the ratios below are the ones
measured on our caches and are the only compression the plan assumes.
"""

from __future__ import annotations

from actcache.cluster._plan_error import PlanError
from actcache.cluster.weight_bytes import ModelShape, dtype_bytes
from actcache.storage.layout import HOOKS

__all__ = [
    "HOOKS",
    "ZSTD_RATIO_BF16",
    "ZSTD_RATIO_FLOAT32",
    "compression_ratio",
    "hook_width",
]

ZSTD_RATIO_BF16 = 1.45  # measured, lossless zstd on bfloat16 bits (stored as uint16)
ZSTD_RATIO_FLOAT32 = 1.25  # measured, lossless zstd on float32
_RATIOS = {"bfloat16": ZSTD_RATIO_BF16, "float32": ZSTD_RATIO_FLOAT32}


def hook_width(hook: str, shape: ModelShape) -> int:
    """Values per token one (hook, layer) stores: resid_post = hidden_size, attn_z = heads x head_dim."""
    if hook == "resid_post":
        return shape.hidden_size
    if hook == "attn_z":
        return shape.num_heads * shape.head_dim
    raise PlanError(f"unknown hook {hook!r}: use one of {', '.join(HOOKS)}")


def compression_ratio(capture_dtype: str) -> float:
    """Measured lossless ratio for a capture dtype; 1.0 (no gain assumed) where we have not measured one."""
    dtype_bytes(capture_dtype)
    return _RATIOS.get(capture_dtype, 1.0)
