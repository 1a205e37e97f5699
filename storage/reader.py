"""Read-only access to a cache: by document, or streamed chunk by chunk with bounded memory."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import zarr

from .annotations import AnnotationLog, apply_versions
from .backends.backend_url import open_backend
from .cache_ref import CacheRef
from .dtypes import to_torch, widen_to_float32
from .errors import CacheError, CorruptCacheError, NonFiniteError
from .gc_pause import gc_paused
from .hook_points import array_dtype, is_integer_hook
from .index import CommitRecord, DocLocation
from .layout import TOKEN_IDS, activation_name, parse_activation_name, segment_path
from .lossy import DequantizedArray, is_scaled, read_dtype, side_names
from .root import open_root, stored_row_chunks
from .segment_stream import stream_segment
from .snapshots import SnapshotLog

if TYPE_CHECKING:
    import torch
    import xarray

    from .pooled import Pooling, Where
    from .token_loader import TokenDataset

__all__ = ["Document", "CacheReader", "open_cache"]

STREAM_BLOCK_BYTES = 64 << 20
NAMED_DOCUMENTS = 3  # documents named in an error message; the rest are counted


class Document(NamedTuple):
    """A committed document: content key, labels, real token count (and its count before truncation)."""

    key: str
    meta: dict[str, Any]
    n_tokens: int
    original_tokens: int


def open_cache(location: str | os.PathLike[str], annotations: int | None = None, *, tag: str | None = None,
               ) -> CacheReader:
    """A read-only handle on the committed contents of a cache: a folder, or `s3://bucket/prefix` (endpoint and
    credentials from the standard AWS_* variables). It never writes: read-only credentials and mounts suffice.

    `annotations` picks the label version documents carry in `meta` (None: the newest; 0: the metadata each
    document was first built with; see storage/annotations.py). `tag` reads exactly the state `actcache tag` pinned
    under that name (documents and labels), whatever was appended or relabelled since. The reader sees one
    consistent snapshot for its lifetime; `refresh()` moves it to the newest.
    """
    if isinstance(location, CacheRef) and tag is None:
        tag = location.tag
    return CacheReader(location, annotations, tag=tag)


class CacheReader:
    """Committed documents only: a unit being written, or left by a crashed writer, is invisible."""

    def __init__(self, location: str | os.PathLike[str], annotations: int | None = None, *,
                 tag: str | None = None) -> None:
        self.backend = open_backend(location)
        self.url = self.backend.url
        self.tag = tag
        self._annotations = annotations
        self._group, self.fingerprint = open_root(self.backend)
        snapshots = SnapshotLog(self.backend)
        self.snapshot = snapshots.tagged(tag) if tag is not None else snapshots.current()
        if tag is not None and annotations is not None and annotations != self.snapshot.annotation_version:
            raise CacheError(f"tag {tag!r} pins annotation version {self.snapshot.annotation_version}: leave out "
                             f"annotations={annotations} (or open the cache without the tag)")
        self._index = self.snapshot.index
        # label versions read now (a relabel after opening is not seen before `refresh()`), applied when first needed
        self._label_versions = AnnotationLog(self.backend).read_upto(
            self.snapshot.annotation_version if tag is not None else annotations)
        self._arrays: dict[tuple[str, str], zarr.Array] = {}
        self._missing: dict[tuple[str, str], frozenset[int]] = {}  # (segment, array) -> chunks the store lacks

    def refresh(self) -> None:
        """Move to the newest committed state (a tagged reader stays at its tag)."""
        fresh = CacheReader(self.url, self._annotations, tag=self.tag)
        self.__dict__.clear()  # cached views of the old state go too
        self.__dict__.update(fresh.__dict__)

    # -- what is in the cache -------------------------------------------------------------------------------
    @property
    def path(self) -> str:
        """Where the cache is, as messages name it (the same as `url`: a folder, or s3://bucket/prefix)."""
        return self.url

    @property
    def dtype(self) -> str:
        return self.fingerprint.dtype

    @property
    def store_as(self) -> str:
        """How values are stored: exact, or a lossy mode (storage/lossy.py); reads are float32 either way."""
        return self.fingerprint.capture.store_as

    @property
    def hooks(self) -> tuple[str, ...]:
        return self.fingerprint.capture.hooks

    @property
    def layers(self) -> tuple[int, ...]:
        return self.fingerprint.capture.layers

    @property
    def model_source(self) -> dict[str, Any] | None:
        """Where the model's weights were when the cache was created (for solvers that read W_O or W_down)."""
        header = self._group.attrs.get("actcache", {})
        return header.get("model_source") if isinstance(header, dict) else None

    def width(self, hook: str) -> int:
        self._check_hook_layer(hook, None)
        return self.fingerprint.widths[hook]

    def head_shape(self, hook: str = "attn_z") -> tuple[int, int]:
        """(n_heads, head_dim) of a per-head hook, to view its rows as [tokens, heads, head_dim]."""
        attrs = self.fingerprint.hook_attrs.get(hook, {})
        if "n_heads" not in attrs:
            raise CacheError(f"hook {hook!r} has no head shape; per-head views exist for attn_z")
        return int(attrs["n_heads"]), int(attrs["head_dim"])

    @cached_property
    @gc_paused
    def _metas(self) -> dict[str, dict[str, Any]]:
        """key -> labels as of the reader's annotation version (built on first use: opening decodes no document's
        labels)."""
        metas, rows = self._index.columns.metas, self._index.rows.tolist()
        return apply_versions(dict(zip(self._index.keys(), (metas[r] for r in rows), strict=True)),
                              self._label_versions)

    @cached_property
    @gc_paused
    def _documents(self) -> list[Document]:
        columns, rows, metas = self._index.columns, self._index.rows, self._metas
        n_tokens = columns.n_tokens[rows]
        original = columns.original_tokens[rows]
        original = np.where(original > 0, original, n_tokens)  # as `original_tokens or n_tokens` did
        return list(map(Document, self._index.keys(), map(metas.__getitem__, self._index.keys()), n_tokens.tolist(),
                        original.tolist()))

    def documents(self) -> list[Document]:
        """Every committed document, in commit order."""
        return list(self._documents)

    def annotation_versions(self) -> list[dict[str, Any]]:
        """Every published label version (number, time, source, documents it relabels), oldest first; version 0,
        the metadata of the commit records, is implicit."""
        log = AnnotationLog(self.backend)
        return [log.read(v).summary() for v in log.versions()]

    def commit_records(self) -> list[CommitRecord]:
        """The committed units, in commit order."""
        return list(self._index.records)

    def document(self, key: str) -> Document:
        loc = self._locate(key)
        return Document(loc.record.key, self._metas[key], loc.record.n_tokens,
                        loc.record.original_tokens or loc.record.n_tokens)

    @property
    def n_documents(self) -> int:
        return self._index.n_documents

    @property
    def n_tokens(self) -> int:
        return self._index.n_tokens

    # -- values -----------------------------------------------------------------------------------------------
    def token_ids(self, key: str) -> np.ndarray:
        loc = self._locate(key)
        self._require_chunks(loc.segment, TOKEN_IDS, loc.start, loc.stop)
        return np.asarray(self._array(loc.segment, TOKEN_IDS)[loc.start:loc.stop])

    def activations(self, hook: str, layer: int, key: str, span: tuple[int, int] | None = None, *,
                    check_finite: bool = False) -> np.ndarray:
        """[n_tokens, width] float32 (bf16 and fp16 caches widen exactly; `router_experts` ids stay int16); `span`
        picks token positions [a, b).

        `check_finite` refuses NaN/inf rows (NonFiniteError) instead of returning them: analyses set it.
        """
        rows = self._values(hook, self._stored(hook, layer, key, span))
        if check_finite and not np.isfinite(rows).all():
            raise self._non_finite(hook, layer, [key])
        return rows

    def tensor(self, hook: str, layer: int, key: str, span: tuple[int, int] | None = None) -> torch.Tensor:
        """The same rows as a torch tensor in the cache's own dtype (e.g. torch.bfloat16, bit-exact); a lossy cache
        gives its stored dtype (bfloat16), or float32 for the scaled modes (fp8, int8: codes times scales)."""
        return to_torch(self._stored(hook, layer, key, span), array_dtype(hook, self._read_dtype(hook)))

    def iter_activations(self, hook: str, layer: int, keys: Iterable[str] | None = None, *,
                         block_bytes: int = STREAM_BLOCK_BYTES, check_finite: bool = False,
                         ) -> Iterator[tuple[Document, np.ndarray]]:
        """Yield (document, float32 rows) for every wanted document, reading each chunk at most once.

        Memory stays near `block_bytes` plus the longest document, whatever the cache size. `check_finite` stops
        the stream with a NonFiniteError naming the documents before any NaN/inf row is yielded.
        """
        self._check_hook_layer(hook, layer)
        wanted = None if keys is None else set(keys)
        if wanted is not None:
            unknown = wanted - self._index.docs.keys()
            if unknown:
                raise KeyError(f"{len(unknown)} document key(s) not in {self.path}, e.g. {sorted(unknown)[0]}")
        by_segment: dict[str, list[DocLocation]] = {}
        for loc in self._index.docs.values():
            if wanted is None or loc.record.key in wanted:
                by_segment.setdefault(loc.segment, []).append(loc)
        for segment, locs in by_segment.items():
            name = activation_name(hook, layer)
            stream = stream_segment(self.backend, self._array(segment, name), locs, block_bytes,
                                    require=partial(self._require_chunks, segment, name))  # ChunkDecoder threads
            for loc, rows in stream:
                out = self._values(hook, rows)
                if check_finite and not np.isfinite(out).all():  # name every such document of this unit
                    bad = [loc.record.key] + [other.record.key for other, more in stream
                                              if not np.isfinite(self._values(hook, more)).all()]
                    raise self._non_finite(hook, layer, bad)
                yield self.document(loc.record.key), out

    # -- the next step after a solve: pooled matrices, texts, one xarray Dataset (each in its own module) ------
    def pooled(self, hook: str, layer: int, pooling: str | Pooling = "last", where: Where | None = None, *,
               project: np.ndarray | None = None) -> tuple[np.ndarray, list[str], list[dict[str, Any]]]:
        """(X [n_docs, width] float32, keys, metas): one pooled row per document (`last`, `mean`, `mean-skip:K`,
        `span:A:B`, pooled exactly as the solvers pool), documents filtered by labels, e.g.
        `where={"split": "test"}`, in `documents()` order. Streams the layer with bounded memory. `project`
        (k, width) returns the projections X @ project.T instead, without keeping X."""
        from .pooled import pooled_matrix

        return pooled_matrix(self, hook, layer, pooling, where, project)

    def text(self, key: str) -> str:
        """The document's text as the corpus gave it (TextsMissingError for a cache built with --no-text)."""
        (text,) = self.texts([key])
        assert text is not None  # strict: a missing text raised
        return text

    def texts(self, keys: Sequence[str], *, strict: bool = True) -> list[str | None]:
        """Texts of many documents, each segment's texts read once. A document built with --no-text raises
        TextsMissingError, or comes back as None with `strict=False`."""
        from .texts import has_texts, read_texts

        locations = [self._locate(k) for k in keys]
        by_segment: dict[str, list[int]] = {}
        for loc in locations:
            by_segment.setdefault(loc.segment, []).append(loc.position)
        found: dict[tuple[str, int], str | None] = {}
        for segment, indices in by_segment.items():
            group = zarr.open_group(self._group.store, path=segment_path(segment), mode="r")
            stored = read_texts(group, indices) if strict or has_texts(group) else [None] * len(indices)
            found.update(zip(((segment, i) for i in indices), stored, strict=True))
        return [found[(loc.segment, loc.position)] for loc in locations]

    def xarray(self, hook: str, layers: Sequence[int] | None = None) -> xarray.Dataset:
        """One lazy Dataset over every committed document: variables `layer_<i>` (token, feature) float32, read
        chunk by chunk only when indexed; coordinates `document` (key), `position` and each label field per token."""
        from .xarray_view import cache_dataset

        return cache_dataset(self, hook, layers)

    def tokens(self, hooks: Sequence[str] | None = None, layers: Sequence[int] | None = None, *,
               batch_size: int = 4096, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
               where: Where | None = None, positions: int | slice | tuple[int, int | None] | None = None,
               dtype: str = "float32", epochs: int = 1, buffer_tokens: int = 1 << 15,
               threads: int | None = None) -> TokenDataset:
        """Token batches for training (a torch IterableDataset; `DataLoader(ds, batch_size=None, num_workers=N)`):
        `{"<hook>.<layer>": [B, width], ..., "token_index": [B] int64}` (the row in the concatenation of
        `documents()`), every selected token once per epoch, all hooks/layers of a token in the same row.

        `shuffle`: units of whole chunks in a seeded global permutation, then rows mixed within windows of
        `buffer_tokens` (memory is about three windows; larger mixes better). The order is the same for any
        number of DataLoader workers or decoding `threads` (default: the cores, split among the workers; a
        worker left with one decodes on its own thread; a shuffled read is served by worker 0 alone, since every
        batch of a window needs all of its units).
        `rank`/`world_size` give each rank the same number of batches (at most world_size - 1 dropped, none
        repeated); `where` filters documents by label (as `pooled`); `positions` keeps token positions `k:` (an
        int) or a slice of each document; `dtype` is float32 or the stored dtype (the cache's, or bfloat16 for
        `--store-as bfloat16`; fp8/int8 caches decode to float32; float32 rows of a bf16/fp16 cache widen as
        they decode, so its windows hold 4 bytes a value). DataLoader workers hand their batches to the main
        process without a copy (on Linux; storage/window_memory.py). `state_dict()` / `load_state_dict()` resume
        mid-epoch exactly (storage/token_loader.py).
        """
        from .token_loader import TokenDataset
        from .token_plan import LoaderSettings, parse_positions

        hooks = tuple(hooks) if hooks is not None else tuple(h for h in self.hooks if not is_integer_hook(h))
        integer = [h for h in hooks if is_integer_hook(h)]
        if integer:
            raise CacheError(f"hook(s) {integer} hold integer ids, not activations: read them with activations()")
        layers = tuple(layers) if layers is not None else self.layers
        for hook in hooks:
            for layer in layers:
                self._check_hook_layer(hook, layer)
        own = read_dtype(self.store_as, self.dtype)  # the stored dtype (a lossy cache's bfloat16, or float32)
        if dtype not in ("float32", own):
            raise CacheError(f"dtype {dtype!r}: this {self.dtype} cache (stored {self.store_as}) reads as float32 "
                             f"or {own}")
        settings = LoaderSettings(hooks, layers, batch_size, shuffle, seed, rank, world_size, buffer_tokens,
                                  parse_positions(positions), epochs, dtype)
        return TokenDataset(self.backend, own, dict(self.fingerprint.widths), self._index.records,
                            self.documents(), settings, where, threads, store_as=self.store_as,
                            outliers=self.fingerprint.capture.outliers)

    def _segment_rows(self, segment: str, name: str, start: int, stop: int) -> np.ndarray:
        """Stored rows [start, stop) of one committed segment's array (for views that span segments)."""
        self._require_chunks(segment, name, start, stop)
        return np.asarray(self._array(segment, name)[start:stop])

    # -- summary ----------------------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """What the cache is (model identity, capture spec, cache fingerprint), what it holds (documents, label
        fields with their most common values) and its bytes on disk, with the compression ratio of committed
        activation chunks (storage/cache_info.py)."""
        from .cache_info import cache_info

        return cache_info(self)

    # -- internals ----------------------------------------------------------------------------------------------
    def _check_hook_layer(self, hook: str, layer: int | None) -> None:
        if hook not in self.hooks:
            raise CacheError(f"hook {hook!r} is not in {self.path}: it holds {', '.join(self.hooks)}")
        if layer is not None and layer not in self.layers:
            raise CacheError(f"layer {layer} is not in {self.path}: it holds layers {list(self.layers)}")

    @cached_property
    def _record_of_segment(self) -> dict[str, CommitRecord]:
        return {r.segment: r for r in self._index.records}

    def _missing_chunks(self, segment: str, name: str) -> frozenset[int]:
        """Row-chunk indices of an array that its commit record counts but the store lacks: one listing per array
        and reader, so that a read never trusts a missing chunk's fill value (NaN, or 0 in an integer array)."""
        missing = self._missing.get((segment, name))
        if missing is None:
            manifest = self._record_of_segment[segment].arrays.get(name)
            if manifest is not None:
                expected = manifest.n_chunks
            else:  # token ids and offsets: their count follows from the array's own shape
                array = self._array(segment, name)
                expected = -(-int(array.shape[0]) // int(array.chunks[0]))
            present = stored_row_chunks(self.backend, f"{segment_path(segment)}/{name}")
            missing = frozenset(range(expected)) - present
            self._missing[(segment, name)] = missing
        return missing

    def _require_chunks(self, segment: str, name: str, start: int, stop: int) -> None:
        """CorruptCacheError naming the documents, when any chunk under rows [start, stop) is missing (of a scaled
        lossy array: of its codes or its side arrays)."""
        for side in self._sides(name):
            self._require_chunks(segment, side, start, stop)
        missing = self._missing_chunks(segment, name)
        if not missing:
            return
        rows = int(self._array(segment, name).chunks[0])
        hit = sorted(i for i in missing if start // rows <= i <= (stop - 1) // rows)
        if not hit:
            return
        record, first = self._record_of_segment[segment], 0
        keys = []
        for doc in record.documents:
            if any(first < (i + 1) * rows and first + doc.n_tokens > i * rows for i in hit):
                keys.append(doc.key)
            first += doc.n_tokens
        hook, layer = parse_activation_name(name) if "/layer_" in name else (name, None)
        raise CorruptCacheError(
            f"{hook}{'' if layer is None else f' layer {layer}'}: chunk(s) {', '.join(map(str, hit[:3]))} of "
            f"committed unit {record.unit_id} are missing from {segment_path(segment)}/{name} (documents "
            f"{self._describe(keys)}): run `actcache verify {self.path}` to list every damaged document, then "
            f"restore the files or rebuild into a new cache"
        )

    def _non_finite(self, hook: str, layer: int, keys: list[str]) -> NonFiniteError:
        return NonFiniteError(
            f"{hook} layer {layer}: non-finite values (NaN/inf) in documents {self._describe(keys)} of {self.path}: "
            f"run `actcache verify {self.path}`; if it passes, the model produced them (e.g. a float16 overflow): "
            f"rebuild in bfloat16 or float32, or leave these documents out"
        )

    def _describe(self, keys: list[str]) -> str:
        """'key "text..." (source), ...' for the first few documents (text when stored), and how many more."""
        named = [k for k in keys[:NAMED_DOCUMENTS] if k in self._index.docs]
        try:
            texts = self.texts(named, strict=False)
        except (CacheError, OSError, ValueError):  # the texts may sit in the damaged unit too: keys still name it
            texts = [None] * len(named)
        shown = []
        for key, text in zip(named, texts, strict=True):
            source = self.document(key).meta.get("source")
            snippet = f' "{text[:40]}{"..." if len(text) > 40 else ""}"' if text else ""
            shown.append(f"{key}{snippet}" + (f" ({source})" if source else ""))
        more = f" and {len(keys) - NAMED_DOCUMENTS} more" if len(keys) > NAMED_DOCUMENTS else ""
        return ", ".join(shown) + more

    def _locate(self, key: str) -> DocLocation:
        try:
            return self._index.docs[key]
        except KeyError:
            raise KeyError(f"document {key!r} is not committed in {self.path}") from None

    def _array(self, segment: str, name: str) -> zarr.Array:
        """The array `name` of a segment; a scaled lossy activation array reads as float32 (its codes decoded with
        their scales and outliers)."""
        cached = self._arrays.get((segment, name))
        if cached is None:
            cached = zarr.open_array(self._group.store, path=f"{segment_path(segment)}/{name}", mode="r")
            sides = self._sides(name)
            if sides:
                cached = DequantizedArray(cached, [self._array(segment, side) for side in sides],  # type: ignore[assignment]
                                          self.store_as)
            self._arrays[(segment, name)] = cached
        return cached

    def _sides(self, name: str) -> tuple[str, ...]:
        """The side arrays of array `name` when it holds scaled lossy codes (storage/lossy.py); none for exact and
        bfloat16 caches, integer ids and the side arrays themselves (all stored exactly)."""
        if not is_scaled(self.store_as) or "/layer_" not in name:
            return ()
        hook, layer = parse_activation_name(name)
        if hook not in self.hooks or is_integer_hook(hook):
            return ()
        return side_names(hook, layer, self.store_as, self.fingerprint.capture.outliers)

    def _read_dtype(self, hook: str) -> str:
        """The dtype a hook's rows are read in before widening: the cache's, or a lossy mode's (storage/lossy.py)."""
        return self.dtype if is_integer_hook(hook) else read_dtype(self.store_as, self.dtype)

    def _values(self, hook: str, stored: np.ndarray) -> np.ndarray:
        """Stored rows as values: float32 (widened exactly), or the integer ids of an integer hook as stored."""
        return stored if is_integer_hook(hook) else widen_to_float32(stored, self._read_dtype(hook))

    def _stored(self, hook: str, layer: int, key: str, span: tuple[int, int] | None) -> np.ndarray:
        self._check_hook_layer(hook, layer)
        loc = self._locate(key)
        start, stop = loc.start, loc.stop
        if span is not None:
            a, b = span
            if not 0 <= a < b <= loc.record.n_tokens:
                raise ValueError(f"span {span} is outside document {key} of {loc.record.n_tokens} tokens")
            start, stop = loc.start + a, loc.start + b
        name = activation_name(hook, layer)
        self._require_chunks(loc.segment, name, start, stop)
        return np.asarray(self._array(loc.segment, name)[start:stop])
