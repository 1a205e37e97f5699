"""Bytes a capture produces: per token, for a corpus, per second.

Values are stored losslessly in the capture dtype by default, so a token costs the sum of its captured widths times
the dtype size; a lossy `--store-as` mode costs its code size per value plus, for fp8/int8, a float32 scale per
token row (storage/lossy.py `row_bytes`). Lossless zstd on the raw bits buys little (mantissa bits are close to
random); the ratios below are the only compression the plan assumes, and each is the one
tests/bench/bench_build.py measures on SmolLM2 (the README's Performance table prints them;
tests/cluster/test_planner.py checks the two agree). fp8 and int8 codes have no measured build ratio: none is
assumed.
"""

from __future__ import annotations

from actcache.cluster._plan_error import PlanError
from actcache.cluster.weight_bytes import ModelShape, dtype_bytes
from actcache.storage.dtypes import storage_dtype
from actcache.storage.errors import InputError
from actcache.storage.hook_points import HOOK_POINTS, HOOKS, array_dtype, hook_widths
from actcache.storage.lossy import row_bytes

__all__ = [
    "HOOKS",
    "ZSTD_RATIO_BF16",
    "ZSTD_RATIO_FLOAT32",
    "compression_ratio",
    "hook_bytes",
    "hook_width",
]

ZSTD_RATIO_BF16 = 1.45  # bench_build.py: byte shuffle + zstd-1 on bfloat16 bits (stored as uint16)
ZSTD_RATIO_FLOAT32 = 1.18  # bench_build.py: byte shuffle + zstd-1 on float32
_RATIOS = {"bfloat16": ZSTD_RATIO_BF16, "float32": ZSTD_RATIO_FLOAT32}


def hook_width(hook: str, shape: ModelShape) -> int:
    """Values per token one (hook, layer) stores: the model dimension its feature axis spans (hidden_size,
    heads x head_dim, the dense intermediate_size, or experts per token; storage/hook_points.py)."""
    if hook not in HOOK_POINTS:
        raise PlanError(f"unknown hook {hook!r}: use one of {', '.join(HOOKS)}")
    dims = {"d_model": shape.hidden_size, "head_feature": shape.num_heads * shape.head_dim,
            "d_ff": shape.intermediate_size, "top_k": shape.experts_per_token}
    try:
        return hook_widths([hook], dims)[hook]
    except InputError as error:
        raise PlanError(str(error)) from None


def hook_bytes(hook: str, shape: ModelShape, capture_dtype: str, store_as: str = "exact") -> int:
    """Bytes per token of one (hook, layer) before compression: its width times its stored item size (router
    expert ids: int16, always exact), or a lossy mode's codes and scale."""
    dtype = array_dtype(hook, capture_dtype)
    if dtype != capture_dtype:
        return hook_width(hook, shape) * storage_dtype(dtype).itemsize
    return row_bytes(store_as, hook_width(hook, shape), dtype_bytes(dtype))


def compression_ratio(capture_dtype: str, store_as: str = "exact") -> float:
    """Measured lossless ratio of what is stored (the capture dtype, or bfloat16 codes); 1.0 (no gain assumed)
    where we have not measured one."""
    dtype_bytes(capture_dtype)
    return _RATIOS.get(capture_dtype if store_as == "exact" else store_as, 1.0)
