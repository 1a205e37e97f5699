"""Lossy storage modes (`build --store-as`): the one place for their maths, used by writers and every reader.

- `exact` (default): values in the compute dtype, bit for bit.
- `bfloat16`: float32 rounded to bfloat16 (round to nearest even, as torch does), stored as uint16 bits.
- `fp8`: float8_e4m3fn codes (uint8 bits) of `x / scale`, one float32 scale per token row, `scale = absmax / 448`
  (the largest e4m3fn value), rounded to nearest even as torch's `x.to(torch.float8_e4m3fn)` does.
- `int8`: symmetric codes `rint(x / scale)` in [-127, 127], `scale = absmax / 127`: |x - code * scale| <= scale / 2.

Outliers (fp8 and int8, `capture.outliers` = k > 0): the k largest-magnitude values of each token row are kept
exactly (float32) beside the codes, with their dimensions, and the scale is the absmax of the rest. Residual
streams have a few massive dimensions (SmolLM2: |x| up to ~600 against a median of ~2) that would otherwise set
every token's scale, so that the codes of all other dimensions lose most of their range (measured on SmolLM2,
README "Lossy storage": last-token CAA cosine 0.9941 -> 0.9991 for fp8 at k = 16, 0.983 -> 0.9999 for int8 at k = 8).
The dimensions are chosen per token (no per-array state: a row decodes alone, attention-sink tokens get their own)
and kept in ascending order, so that rows with the same massive dimensions compress to almost nothing.

Scaled modes keep their side arrays beside the codes, chunked like them (`side_names`, in `decode`'s order):
`<hook>.scale/layer_<L>` float32 [tokens, 1], then with outliers `<hook>.outlier_dims/layer_<L>` (uint16)
and `<hook>.outlier_values/layer_<L>` (float32), both [tokens, min(k, width)]. Readers get `codes * scale` in
float32 with row t's `outlier_values[t, j]` put at column `outlier_dims[t, j]`. k = 0 is the layout of caches
written before outliers (a header without `capture.outliers`): they read as they always did. A writer measures, per
token row, the relative L2 error and the cosine of what readers will get against the exact values it was handed;
`summarize` keeps them with each commit record and `combine` aggregates them over commits (`actcache info`).
Numpy only: storage needs no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from .store_modes import OUTLIERS, STORE_MODES

__all__ = ["STORE_MODES", "OUTLIERS", "check_mode", "is_scaled", "code_dtype", "code_dtype_name", "read_dtype",
           "side_names", "side_arrays", "side_owner", "sides_of", "SideArray", "row_bytes", "encode",
           "decode", "row_errors", "summarize", "combine", "DequantizedArray"]

FP8_MAX = 448.0  # largest finite float8_e4m3fn
INT8_MAX = 127
_SCALED = {"fp8": FP8_MAX, "int8": float(INT8_MAX)}
_CODES = {"bfloat16": ("uint16", "bfloat16"), "fp8": ("uint8", "float8_e4m3fn"), "int8": ("int8", "int8")}
FP8_NAN = 0x7F
SCALE_DTYPE = np.dtype(np.float32)  # one per token row of a scaled mode
OUTLIER_DTYPE = np.dtype(np.float32)  # the exact outlier values (any compute dtype widens to float32 exactly)
_SIDES = ("scale", "outlier_dims", "outlier_values")  # side array kinds, in `decode`'s order


def _fp8_table() -> np.ndarray:
    """float32 value of each of the 256 float8_e4m3fn codes: sign, 4 exponent bits (bias 7), 3 mantissa bits;
    exponent 0 is subnormal, 0x7F/0xFF are NaN, there is no infinity."""
    codes = np.arange(256)
    exponent, mantissa = (codes >> 3) & 0xF, codes & 0x7
    magnitude = np.where(exponent == 0, mantissa / 8 * 2.0 ** -6, (1 + mantissa / 8) * 2.0 ** (exponent - 7))
    values = np.where(codes & 0x80, -magnitude, magnitude).astype(np.float32)
    values[(codes & 0x7F) == FP8_NAN] = np.nan
    return values


_FP8_VALUES = _fp8_table()


def check_mode(mode: str) -> str:
    if mode not in STORE_MODES:
        raise ValueError(f"unknown storage mode {mode!r}: use one of {', '.join(STORE_MODES)}")
    return mode


def is_scaled(mode: str) -> bool:
    """Whether the mode keeps a per-token scale array beside its codes."""
    return check_mode(mode) in _SCALED


def code_dtype(mode: str) -> np.dtype:
    """numpy dtype of a lossy mode's stored codes."""
    return np.dtype(_CODES[mode][0])


def code_dtype_name(mode: str) -> str:
    """The true dtype of a lossy mode's codes (the arrays' `actcache_dtype` attribute)."""
    return _CODES[mode][1]


def read_dtype(mode: str, compute_dtype: str) -> str:
    """The dtype readers hold rows in before any widening: the compute dtype (exact), bfloat16, or float32 (scaled
    modes decode straight to float32)."""
    if check_mode(mode) == "exact":
        return compute_dtype
    return "bfloat16" if mode == "bfloat16" else "float32"


def _dims_dtype(width: int) -> np.dtype:
    """The outlier dimensions' dtype: uint16 up to 65,536 columns (every hidden size in use), else uint32."""
    return np.dtype(np.uint16 if width <= 1 << 16 else np.uint32)


def row_bytes(mode: str, width: int, exact_itemsize: int) -> int:
    """Bytes one token row of `width` values takes before compression: the compute dtype's `exact_itemsize` per
    value (exact), or the mode's code size, plus the scaled modes' float32 scale and the outliers a build of that
    mode keeps (`OUTLIERS`: what `plan` sizes a store by)."""
    if check_mode(mode) == "exact":
        return width * exact_itemsize
    if not is_scaled(mode):
        return width * code_dtype(mode).itemsize
    kept = min(OUTLIERS[mode], width)
    return width * code_dtype(mode).itemsize + SCALE_DTYPE.itemsize + kept * (
        _dims_dtype(width).itemsize + OUTLIER_DTYPE.itemsize)


def side_names(hook: str, layer: int, mode: str, outliers: int) -> tuple[str, ...]:
    """Paths of the side arrays of (hook, layer) inside a segment, in `decode`'s order: none (exact, bfloat16),
    the scales, then with `outliers` > 0 the outliers' dimensions and values."""
    kinds = _SIDES if outliers else _SIDES[:1]
    return tuple(f"{hook}.{kind}/layer_{layer}" for kind in kinds) if is_scaled(mode) else ()


def side_owner(group: str) -> str:
    """The hook whose side arrays a segment's group holds: `attn_z` for `attn_z.scale` (and for `attn_z`)."""
    hook, _, kind = group.partition(".")
    return hook if kind in _SIDES else group


class SideArray(NamedTuple):
    """What a writer creates for one side array (chunked like its codes, same codec chain); the codes array names
    it in its attribute `actcache_<kind>` (`sides_of`)."""

    kind: str  # scale, outlier_dims, outlier_values
    name: str
    width: int
    dtype: np.dtype
    fill_value: float | int
    feature_dim: str  # zarr dimension name of the columns (the rows are tokens)


def side_arrays(hook: str, layer: int, width: int, mode: str, outliers: int) -> list[SideArray]:
    """The side arrays of a `width`-column (hook, layer) array (missing chunks never read as fill: readers check)."""
    names = side_names(hook, layer, mode, outliers)
    kept = min(outliers, width)
    specs = [SideArray(_SIDES[0], names[0], 1, SCALE_DTYPE, float("nan"), "scale")] if names else []
    if len(names) > 1:
        specs += [SideArray(_SIDES[1], names[1], kept, _dims_dtype(width), 0, "outlier"),
                  SideArray(_SIDES[2], names[2], kept, OUTLIER_DTYPE, float("nan"), "outlier")]
    return specs


def sides_of(attributes: Mapping[str, Any]) -> list[str]:
    """The side arrays a codes array names in its attributes (`actcache_scale`, ...), in `decode`'s order."""
    return [attributes[f"actcache_{kind}"] for kind in _SIDES if f"actcache_{kind}" in attributes]


def _round_fp8(y: np.ndarray) -> np.ndarray:
    """float32 -> float8_e4m3fn bits, round to nearest even as torch does; |y| <= 448 (larger saturates to 448).

    Normal range (|y| >= 2^-6): the float32 mantissa rounded to 3 bits (a carry moves the exponent), exponent
    rebiased from 127 to 7. Below it the subnormals m * 2^-9, m = rint(|y| * 2^9) in 0..8 (8 is 2^-6, code 8).
    """
    magnitude = np.abs(y)
    bits = magnitude.view(np.uint32)
    rounded = (bits + (0x7FFFF + ((bits >> 20) & 1))) >> 20  # exponent and 3 mantissa bits, rounded
    normal = rounded.astype(np.int64) - ((127 - 7) << 3)
    with np.errstate(invalid="ignore"):  # NaN casts to garbage here, replaced below
        subnormal = np.rint(magnitude * np.float32(2 ** 9)).astype(np.int64)
    code = np.where(magnitude < np.float32(2 ** -6), subnormal, np.clip(normal, 0, FP8_NAN - 1)).astype(np.uint8)
    code |= np.signbit(y).astype(np.uint8) << 7
    code[np.isnan(y)] = FP8_NAN
    return code


def _bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, round to nearest even (NaN stays a quiet NaN), as torch rounds."""
    bits = x.view(np.uint32)
    rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    rounded[np.isnan(x)] = 0x7FC0
    return rounded


def _split_outliers(x: np.ndarray, outliers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a copy of `x` with each row's `outliers` largest-magnitude values zeroed, their columns in ascending order
    [n, k], their values [n, k]); k = min(outliers, width). NaN counts as the largest magnitude."""
    width = x.shape[1]
    kept = min(outliers, width)
    dims = np.argpartition(np.abs(x), width - kept, axis=1)[:, width - kept:]
    dims.sort(axis=1)
    values = np.take_along_axis(x, dims, axis=1)
    rest = x.copy()
    np.put_along_axis(rest, dims, np.float32(0), axis=1)
    return rest, dims.astype(_dims_dtype(width)), values


def encode(exact: np.ndarray, mode: str, outliers: int = 0) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """[n, width] float32 -> (codes [n, width], side arrays in `side_names` order): none for bfloat16, the scales
    [n, 1] float32, then with `outliers` > 0 each row's outlier columns and exact values [n, min(outliers, width)].

    An outlier's code is 0 and the scale is the absmax of the row's other values. A row of zeros gets scale 0
    (codes 0); a row with NaN/inf decodes non-finite (a non-finite scale, or the value kept as an outlier), so
    readers' `check_finite` refuses it, as in an exact cache.
    """
    x = np.ascontiguousarray(exact, dtype=np.float32)
    if mode == "bfloat16":
        return _bfloat16_bits(x), ()
    kept: tuple[np.ndarray, ...] = ()
    if outliers:
        x, dims, values = _split_outliers(x, outliers)
        kept = (dims, values)
    top = _SCALED[mode]
    with np.errstate(invalid="ignore"):
        scales = (np.max(np.abs(x), axis=1, keepdims=True) / np.float32(top)).astype(np.float32)  # [n, 1]
        y = x / np.where(scales == 0, np.float32(1), scales)
    if mode == "fp8":
        return _round_fp8(y), (scales, *kept)
    return np.clip(np.rint(np.nan_to_num(y)), -INT8_MAX, INT8_MAX).astype(np.int8), (scales, *kept)


def decode(codes: np.ndarray, sides: Sequence[np.ndarray], mode: str) -> np.ndarray:
    """Stored codes and their side arrays (`encode`'s, in `side_names` order) -> float32 values, what every reader
    returns: `code * scale`, each outlier value put back at its column."""
    if mode == "bfloat16":
        return (codes.astype(np.uint32) << 16).view(np.float32)
    assert sides, f"{mode} codes need their scales"
    scales, *outliers = sides
    values = _FP8_VALUES[codes] if mode == "fp8" else codes.astype(np.float32)
    values = values * scales.astype(np.float32, copy=False)
    if outliers:
        dims, exact = outliers
        np.put_along_axis(values, dims.astype(np.intp), exact, axis=1)
    return values


def row_errors(exact: np.ndarray, decoded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per finite token row: relative L2 error |x' - x| / |x| and cosine(x, x') (float64; a zero row decoded as
    zeros has error 0 and cosine 1)."""
    finite = np.isfinite(exact).all(axis=1)
    x, y = exact[finite].astype(np.float64), decoded[finite].astype(np.float64)
    nx, ny, err = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1), np.linalg.norm(y - x, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(nx > 0, err / nx, np.where(err > 0, np.inf, 0.0))
        cosine = np.where((nx > 0) & (ny > 0), np.einsum("ij,ij->i", x, y) / (nx * ny),
                          np.where((nx == 0) & (ny == 0), 1.0, 0.0))
    return rel, cosine


def summarize(rel: np.ndarray, cosine: np.ndarray, non_finite: int) -> dict[str, Any]:
    """One array's error record for a commit: over its finite token rows, rel. L2 error mean/p99/max and cosine
    min/mean; `non_finite_tokens` rows were not measured. p99 is a measured row's value (numpy's `higher`), so
    that fewer than 1% of rows lie above it, which `combine` relies on."""
    if len(rel) == 0:
        return {"tokens": 0, "non_finite_tokens": non_finite}
    return {"tokens": len(rel), "non_finite_tokens": non_finite,
            "rel_l2_mean": float(rel.mean()), "rel_l2_p99": float(np.percentile(rel, 99, method="higher")),
            "rel_l2_max": float(rel.max()), "cosine_min": float(cosine.min()), "cosine_mean": float(cosine.mean())}


def combine(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several commits' records of one array as one: means weighted by tokens, extremes of extremes, and for p99
    the largest unit p99 (an upper bound of the whole cache's p99: no unit has more than 1% of rows above it)."""
    measured = [s for s in summaries if s["tokens"]]
    out: dict[str, Any] = {"tokens": sum(s["tokens"] for s in summaries),
                           "non_finite_tokens": sum(s["non_finite_tokens"] for s in summaries)}
    if not measured:
        return out
    weights = np.asarray([s["tokens"] for s in measured], dtype=np.float64)
    for key in ("rel_l2_mean", "cosine_mean"):
        out[key] = float(np.average([s[key] for s in measured], weights=weights))
    out["rel_l2_p99"] = max(s["rel_l2_p99"] for s in measured)
    out["rel_l2_max"] = max(s["rel_l2_max"] for s in measured)
    out["cosine_min"] = min(s["cosine_min"] for s in measured)
    return out


class DequantizedArray:
    """A scaled array's codes and side arrays read together as float32 rows: `array[a:b]`, `.shape`, `.chunks`,
    `.dtype`, the part of zarr's array interface that readers use."""

    def __init__(self, codes: Any, sides: Sequence[Any], mode: str) -> None:
        self.codes, self.sides, self.mode = codes, tuple(sides), mode
        self.shape: tuple[int, ...] = tuple(codes.shape)
        self.chunks: tuple[int, ...] = tuple(codes.chunks)
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, rows: slice) -> np.ndarray:
        return decode(np.asarray(self.codes[rows]), [np.asarray(side[rows]) for side in self.sides], self.mode)
