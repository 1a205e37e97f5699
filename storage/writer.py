"""Creating a cache, opening it for append, starting segments and committing them."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr
from zarr.abc.codec import BytesBytesCodec
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.codecs.numcodecs import Shuffle

from .backends.backend import StorageBackend
from .backends.backend_url import open_backend
from .claims import LEASE_SECONDS, ClaimBoard, Lease, segment_subject
from .commit_journal import publish_commit
from .commit_log import CommitLog
from .dtypes import fill_value, storage_dtype
from .errors import CacheError, NotACacheError, as_write_error
from .fingerprint import CacheFingerprint
from .hook_points import HOOK_POINTS, array_dtype, is_integer_hook
from .index import CommitIndex, CommitRecord
from .layout import (
    CLAIMS,
    DOC_OFFSETS,
    TOKEN_IDS,
    activation_name,
    chunk_tokens_for,
    segment_path,
)
from .lossy import code_dtype, code_dtype_name, side_arrays, side_names
from .records import ArrayManifest, ArraySpec, DocRecord
from .root import check_same_fingerprint, create_root, open_root
from .segment import SegmentWriter
from .snapshots import FOLD_EVERY, SnapshotLog
from .texts import write_texts

__all__ = ["CacheWriter", "ZSTD_LEVEL"]

ZSTD_LEVEL = 1


def _compressors(shuffle_bytes: int | None = None) -> list[BytesBytesCodec]:
    """zstd-1 then crc32c; activations first get a byte shuffle over the whole chunk.

    A float's sign/exponent byte is far more predictable than its mantissa bytes: grouping byte k of every value
    together lets zstd find that (measured on SmolLM2 residuals: 0.92x -> 0.84x of raw for float32, 0.79x -> 0.68x
    for bfloat16, at ~270 MB/s per core).
    """
    codecs: list[BytesBytesCodec] = [ZstdCodec(level=ZSTD_LEVEL, checksum=False), Crc32cCodec()]
    if shuffle_bytes is not None:  # a no-op for 1-byte codes, kept so that every activation has one codec chain
        codecs.insert(0, Shuffle(elementsize=shuffle_bytes))
    return codecs


class CacheWriter:
    """Write side of a cache. Safe to open from many processes: each segment has one writer per array."""

    def __init__(self, backend: StorageBackend, fingerprint: CacheFingerprint, group: zarr.Group,
                 lease_s: float = LEASE_SECONDS) -> None:
        self.backend = backend
        self.url = backend.url
        self.fingerprint = fingerprint
        self._group = group
        # every begun segment is claimed until it is committed or abandoned, so `gc` never takes a live one
        self.claims = ClaimBoard(CommitLog(backend, CLAIMS))
        self._lease = Lease(self.claims, lease_s)
        self._snapshots = SnapshotLog(backend)
        self._since_fold = 0  # own commits not yet folded into a manifest

    @classmethod
    def open(cls, location: str | os.PathLike[str], fingerprint: CacheFingerprint,
             model_source: dict[str, Any] | None = None, *, lease_s: float = LEASE_SECONDS) -> CacheWriter:
        """Create the cache, or open it for append when its fingerprint is the same (else say which field differs).

        `location`: a folder, or `s3://bucket/prefix`. Writers started together on an empty location all succeed:
        one creates the cache and the others join it. `lease_s`: how long a segment claim lives without renewal
        (renewed every third of it while this writer is alive); `gc` removes an uncommitted segment only after its
        claim expired.
        """
        backend = open_backend(location)
        try:
            group, cached = open_root(backend, mode="r+")
        except NotACacheError:
            try:  # refuses a location that holds something else; False: another writer created it just now
                create_root(backend, fingerprint, model_source)
            except OSError as error:
                raise (as_write_error(error, backend.url) or error) from error
            group, cached = open_root(backend, mode="r+")
        check_same_fingerprint(backend.url, cached, fingerprint)
        return cls(backend, cached, group, lease_s)

    def close(self) -> None:
        """Fold what this writer committed, release its claims (segments not committed become garbage for `gc`)
        and stop renewing."""
        try:
            if self._since_fold:
                self.fold()
        finally:
            self._lease.close()

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def index(self) -> CommitIndex:
        """What is committed now (re-read each call: other writers may have committed)."""
        return self._snapshots.current().index

    def fold(self) -> None:
        """Fold the commit records into a snapshot manifest (storage/snapshots.py), so readers open it quickly."""
        self._snapshots.fold()
        self._since_fold = 0

    def array_specs(self) -> list[ArraySpec]:
        fp = self.fingerprint
        return [
            ArraySpec(hook, layer, fp.widths[hook], HOOK_POINTS[hook].feature_dim, fp.hook_attrs.get(hook, {}))
            for hook in fp.capture.hooks
            for layer in fp.capture.layers
        ]

    def begin_segment(self, unit_id: str, docs: Sequence[DocRecord], token_ids: np.ndarray,
                      texts: Sequence[str] | None = None) -> str:
        """Create a segment's group, token arrays, texts (None: --no-text) and (empty) activation arrays; return
        its id.

        Every array's metadata exists before any writer starts, so writers only ever write their own chunks.
        """
        n_tokens = sum(d.n_tokens for d in docs)
        if len(token_ids) != n_tokens:
            raise ValueError(f"unit {unit_id}: {len(token_ids)} token ids for {n_tokens} document tokens")
        if texts is not None and len(texts) != len(docs):
            raise ValueError(f"unit {unit_id}: {len(texts)} texts for {len(docs)} documents")
        segment_id = f"{unit_id[:16]}-{uuid.uuid4().hex[:12]}"
        try:
            self._lease.take(segment_subject(segment_id))  # before the folder exists: gc never sees it unclaimed
            try:
                self._create_segment(segment_id, unit_id, docs, token_ids, n_tokens, texts)
            except BaseException:
                self.abandon(segment_id)
                raise
        except OSError as error:
            raise (as_write_error(error, f"segment {segment_id}") or error) from error
        return segment_id

    def abandon(self, segment_id: str) -> None:
        """Delete a begun segment that will not be committed, and release its claim."""
        self.backend.delete_prefix(f"{segment_path(segment_id)}/")
        self._lease.release(segment_subject(segment_id))

    def _create_segment(self, segment_id: str, unit_id: str, docs: Sequence[DocRecord], token_ids: np.ndarray,
                        n_tokens: int, texts: Sequence[str] | None) -> None:
        attrs = {"unit_id": unit_id, "documents": [d.to_dict() for d in docs]}
        group = self._group.create_group(segment_path(segment_id), attributes=attrs)
        offsets = np.concatenate([[0], np.cumsum([d.n_tokens for d in docs])]).astype(np.int64)
        group.create_array(TOKEN_IDS, data=np.asarray(token_ids, dtype=np.int32), compressors=_compressors(),
                           chunks=(max(1, min(n_tokens, 1 << 18)),), dimension_names=["token"])
        group.create_array(DOC_OFFSETS, data=offsets, compressors=_compressors(), dimension_names=["doc_edge"])
        if texts is not None:
            write_texts(group, texts, _compressors())
        mode = self.fingerprint.capture.store_as
        for spec in self.array_specs():
            dtype = array_dtype(spec.hook, self.fingerprint.dtype)
            stored, fill, extra = storage_dtype(dtype), fill_value(dtype), {}
            if self._lossy(spec.hook):  # codes of storage/lossy.py; NaN fill where the codes have one
                stored, dtype = code_dtype(mode), code_dtype_name(mode)
                fill = {"bfloat16": fill_value("bfloat16"), "fp8": 0x7F, "int8": -128}[mode]
                extra = {"actcache_store_as": mode}
            rows = chunk_tokens_for(spec.width, stored.itemsize)
            sides = side_arrays(spec.hook, spec.layer, spec.width, mode, self.fingerprint.capture.outliers) \
                if self._lossy(spec.hook) else []
            for side in sides:  # fp8/int8 scales and outliers, chunked like the codes
                extra[f"actcache_{side.kind}"] = side.name
                group.create_array(side.name, shape=(n_tokens, side.width), chunks=(rows, side.width),
                                   dtype=side.dtype, compressors=_compressors(side.dtype.itemsize),
                                   fill_value=side.fill_value, dimension_names=["token", side.feature_dim],
                                   attributes={"hook": spec.hook, "layer": spec.layer,
                                               "actcache_dtype": side.dtype.name})
            group.create_array(
                activation_name(spec.hook, spec.layer),
                shape=(n_tokens, spec.width),
                chunks=(rows, spec.width),
                dtype=stored,
                compressors=_compressors(stored.itemsize),
                fill_value=fill,
                dimension_names=["token", spec.feature_dim],
                attributes={"hook": spec.hook, "layer": spec.layer, "actcache_dtype": dtype, **extra, **spec.attrs},
            )

    def _lossy(self, hook: str) -> bool:
        """Whether `hook`'s arrays hold lossy codes (integer ids, e.g. router experts, are always exact)."""
        return self.fingerprint.capture.store_as != "exact" and not is_integer_hook(hook)

    def segment_writer(self, segment_id: str, names: Sequence[str] | None = None, **options: int) -> SegmentWriter:
        """A writer for `names` (default: every activation array) of a begun segment."""
        if names is None:
            names = [activation_name(s.hook, s.layer) for s in self.array_specs()]
        return SegmentWriter(self.backend, segment_id, list(names), self.fingerprint.dtype, **options)

    def commit(self, unit_id: str, segment_id: str, docs: Sequence[DocRecord],
               manifests: Sequence[ArrayManifest]) -> bool:
        """Publish a unit, last and atomically; False when the same unit was committed by someone else first."""
        expected = {activation_name(s.hook, s.layer) for s in self.array_specs()}
        capture = self.fingerprint.capture  # SegmentWriter writes a scaled array's side arrays beside it
        expected |= {name for s in self.array_specs() if self._lossy(s.hook)
                     for name in side_names(s.hook, s.layer, capture.store_as, capture.outliers)}
        written = {m.name for m in manifests}
        if written != expected:
            missing = sorted(expected - written)
            raise CacheError(f"unit {unit_id}: arrays {missing} were not written; the unit stays uncommitted")
        record = CommitRecord(unit_id, segment_id, self.fingerprint.digest, tuple(docs),
                              {m.name: m for m in manifests}, time.time())
        subject = segment_subject(segment_id)
        self._lease.check(subject)  # a lapsed claim may have let gc remove the segment: never publish it then
        try:
            self.backend.sync(f"{segment_path(segment_id)}/")  # nothing the record names may be lost after it
            committed = publish_commit(self.backend, record)  # a journal marker, then the record
        except OSError as error:
            self._lease.release(subject)
            raise (as_write_error(error, f"the commit of unit {unit_id}") or error) from error
        if committed:
            self._lease.release(subject)
            self._since_fold += 1
            if self._since_fold >= FOLD_EVERY:
                self.fold()
        else:  # someone else committed this unit first: ours is garbage
            self.abandon(segment_id)
        return committed
