"""Lossless storage dtypes: zarr 3.1 has no bfloat16, so its raw bits are stored as uint16."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["SUPPORTED_DTYPES", "INTEGER_DTYPES", "storage_dtype", "fill_value", "itemsize", "to_storage",
           "widen_to_float32", "to_torch"]

# true dtype -> numpy dtype of the stored bits: the compute dtypes a cache may have
SUPPORTED_DTYPES: dict[str, str] = {"float32": "float32", "float16": "float16", "bfloat16": "uint16"}
# integer dtypes of single arrays (router expert ids), stored as themselves, whatever the cache dtype
INTEGER_DTYPES: dict[str, str] = {"int16": "int16"}
_STORED = SUPPORTED_DTYPES | INTEGER_DTYPES
_NAN_BITS = {"float32": float("nan"), "float16": float("nan"), "bfloat16": 0x7FC0}


def _check(dtype: str) -> str:
    if dtype not in _STORED:
        raise ValueError(f"unsupported cache dtype {dtype!r}: use one of {', '.join(SUPPORTED_DTYPES)}")
    return dtype


def storage_dtype(dtype: str) -> np.dtype:
    """The numpy dtype that holds `dtype`'s bits on disk."""
    return np.dtype(_STORED[_check(dtype)])


def fill_value(dtype: str) -> float | int:
    """What a missing chunk reads as: NaN for floats (bf16: its bits), -1 for integer arrays (no valid id)."""
    return _NAN_BITS.get(_check(dtype), -1)


def itemsize(dtype: str) -> int:
    return storage_dtype(dtype).itemsize


def to_storage(values: Any, dtype: str) -> np.ndarray:
    """A numpy array of the stored bits; accepts numpy arrays or torch tensors already in `dtype`."""
    _check(dtype)
    if hasattr(values, "detach"):  # torch tensor, imported lazily so storage never needs torch
        import torch

        tensor = values.detach().to("cpu")
        if dtype == "bfloat16":
            if tensor.dtype != torch.bfloat16:
                raise ValueError(f"expected a bfloat16 tensor for a bfloat16 cache, got {tensor.dtype}")
            return tensor.contiguous().view(torch.int16).numpy().view(np.uint16)
        values = tensor.numpy()
    array = np.asarray(values)
    if dtype in INTEGER_DTYPES and array.dtype.kind in "iu" and array.dtype != storage_dtype(dtype):
        narrow = array.astype(storage_dtype(dtype))
        if not np.array_equal(narrow, array):
            raise ValueError(f"integer values outside {dtype}'s range")
        array = narrow
    if array.dtype != storage_dtype(dtype):
        raise ValueError(f"expected {storage_dtype(dtype)} values for a {dtype} cache, got {array.dtype}")
    return array


def widen_to_float32(stored: np.ndarray, dtype: str, out: np.ndarray | None = None) -> np.ndarray:
    """Stored bits -> float32, exactly (bf16 and fp16 widen without rounding; int16 ids too); into `out` (float32,
    the same shape) if given, with no temporary."""
    if out is None:
        if _check(dtype) == "bfloat16":
            return (stored.astype(np.uint32) << 16).view(np.float32)
        return stored.astype(np.float32, copy=False)
    if _check(dtype) == "bfloat16":
        np.left_shift(stored, 16, out=out.view(np.uint32), dtype=np.uint32)
    else:
        np.copyto(out, stored)
    return out


def to_torch(stored: np.ndarray, dtype: str) -> torch.Tensor:
    """Stored bits -> a torch tensor in the cache's true dtype."""
    import torch

    if _check(dtype) == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(stored).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(stored))
