"""One lazy xarray Dataset over every committed unit of a cache: `cache.xarray(hook)`.

Plain `xarray.open_zarr` sees one segment's group at a time, without document keys or labels, and cannot tell
a committed segment from a crashed writer's. Here each (hook, layer) of every committed document becomes one
variable `layer_<i>` with dims (token, feature), backed by an xarray `BackendArray` that reads only the chunks
an indexing touches (no dask needed); the token axis carries the document key, the position in the document
and every label field as coordinates (those are in memory: one 8-byte entry per token and field).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import CacheError
from .hook_points import array_dtype, is_integer_hook
from .index import DocLocation
from .layout import activation_name

if TYPE_CHECKING:
    import xarray

__all__ = ["cache_dataset"]

RESERVED = ("document", "position")


def _require_xarray() -> Any:
    try:
        import xarray
    except ImportError:
        raise CacheError("cache.xarray() needs xarray: pip install 'actcache[xarray]'") from None
    return xarray


def _runs(locations: Sequence[DocLocation]) -> list[tuple[str, int, int]]:
    """(segment, first row, stop row) of contiguous stretches of documents in token-axis order."""
    runs: list[tuple[str, int, int]] = []
    for loc in locations:
        if runs and runs[-1][0] == loc.segment and runs[-1][2] == loc.start:
            runs[-1] = (loc.segment, runs[-1][1], loc.stop)
        else:
            runs.append((loc.segment, loc.start, loc.stop))
    return runs


def _rows_array(runs: list[tuple[str, int, int]], name: str, width: int, dtype: np.dtype,
                read_rows: Callable[[str, str, int, int], np.ndarray],
                to_values: Callable[[np.ndarray], np.ndarray]) -> Any:
    """A lazily indexed [tokens, width] array over `runs` of array `name`: stored rows become values (`dtype`) by
    `to_values` (the class is built here, so that xarray is imported only when a Dataset is asked for)."""
    from xarray.backends import BackendArray
    from xarray.core import indexing

    class DocumentRows(BackendArray):  # type: ignore[misc]
        """The token axis of many segments as one array; each indexing reads only the rows it needs."""

        def __init__(self) -> None:
            self.starts = np.cumsum([0] + [stop - start for _, start, stop in runs])  # (n_runs + 1,)
            self.shape = (int(self.starts[-1]), width)
            self.dtype = dtype

        def __getitem__(self, key: Any) -> np.ndarray:
            return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.BASIC, self._read)

        def _read(self, key: tuple[Any, ...]) -> np.ndarray:
            row_key, col_key = key
            wanted = range(self.shape[0])[row_key]
            rows = [wanted] if isinstance(wanted, int) else wanted
            if len(rows) == 0:
                block = np.empty((0, width), dtype)
            else:
                lo, hi = min(rows), max(rows) + 1
                block = self._rows(lo, hi)[np.asarray(rows) - lo]
            out = block[:, col_key]
            return out[0] if isinstance(wanted, int) else out

        def _rows(self, lo: int, hi: int) -> np.ndarray:
            parts = []
            first = bisect.bisect_right(self.starts, lo) - 1
            for r in range(first, len(runs)):
                if self.starts[r] >= hi:
                    break
                segment, start, _ = runs[r]
                a, b = max(lo, self.starts[r]) - self.starts[r], min(hi, self.starts[r + 1]) - self.starts[r]
                parts.append(read_rows(segment, name, start + a, start + b))
            return to_values(np.concatenate(parts))

    return indexing.LazilyIndexedArray(DocumentRows())


def _label_column(values: list[Any], counts: np.ndarray) -> np.ndarray:
    """One label field per token: numeric/bool fields keep their type when every document has one, else objects
    (None where a document lacks the field; lists and dicts as JSON)."""
    kinds = {type(v) for v in values}
    if kinds and kinds <= {int} or kinds == {float} or kinds == {bool}:
        per_doc = np.asarray(values)
    else:
        per_doc = np.empty(len(values), dtype=object)
        per_doc[:] = [json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v for v in values]
    return np.repeat(per_doc, counts)


def cache_dataset(reader: Any, hook: str, layers: Sequence[int] | None = None) -> xarray.Dataset:
    """The Dataset of `reader`'s committed documents (in `reader.documents()` order) for `hook` and `layers`."""
    xr = _require_xarray()
    chosen = tuple(reader.layers if layers is None else layers)
    for layer in chosen:
        reader._check_hook_layer(hook, layer)
    docs = reader.documents()  # labels as the reader shows them (the annotation version it was opened with)
    locations: list[DocLocation] = [reader._locate(doc.key) for doc in docs]
    runs = _runs(locations)
    counts = np.asarray([loc.record.n_tokens for loc in locations], dtype=np.int64)  # (n_docs,)
    width = reader.width(hook)
    # values as the reader gives them: float32 (bf16/fp16 widened exactly), or an integer hook's ids as stored
    dtype = np.dtype(array_dtype(hook, reader.dtype) if is_integer_hook(hook) else np.float32)
    values = partial(reader._values, hook)
    variables = {
        f"layer_{layer}": xr.Variable(("token", "feature"),
                                      _rows_array(runs, activation_name(hook, layer), width, dtype,
                                                  reader._segment_rows, values),
                                      attrs={"hook": hook, "layer": layer})
        for layer in chosen
    }
    keys = np.empty(len(locations), dtype=object)
    keys[:] = [loc.record.key for loc in locations]
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    coords: dict[str, tuple[str, np.ndarray]] = {
        "document": ("token", np.repeat(keys, counts)),
        "position": ("token", (np.arange(int(counts.sum())) - starts).astype(np.int32)),
    }
    metas = [doc.meta for doc in docs]
    fields = sorted({name for meta in metas for name in meta})
    for name in fields:
        column = _label_column([meta.get(name) for meta in metas], counts)
        coords[f"meta_{name}" if name in RESERVED or name in variables else name] = ("token", column)
    attrs = {"cache": str(reader.path), "hook": hook, "actcache_dtype": reader.dtype}
    return xr.Dataset(variables, coords=coords, attrs=attrs)
