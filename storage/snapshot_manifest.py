"""Snapshot manifests as one safetensors object: the documents as columns, so that opening reads no JSON per document.

`snapshots/<sequence>.safetensors` is a plain safetensors file (8-byte little-endian header length, a JSON header
naming each tensor's dtype, shape and byte range, then the bytes), readable with `safetensors.numpy.load` or twenty
lines of anything. Its header's `__metadata__["actcache"]` holds the manifest's own fields as a JSON string; the
tensors (all one-dimensional) are the commit records:

    unit_ids         U8   UTF-8 JSON list of the units' ids, in commit order (time, then unit id)
    segments         U8   UTF-8 JSON list of their segment ids
    fingerprints     U8   UTF-8 JSON list of their cache fingerprints
    created          F64  [units]: their commit times
    arrays           U8   their `arrays` objects (as in commits/), UTF-8 JSON, one after another
    array_offsets    I64  [units + 1]: unit u's `arrays` object is bytes array_offsets[u]:array_offsets[u + 1]
                          (decoded when that unit's arrays are first read)
    unit_offsets     I64  [units + 1]: the documents of unit u are rows unit_offsets[u]:unit_offsets[u + 1]
    keys             U8   UTF-8 JSON list of the document keys
    n_tokens         I64  [documents]
    original_tokens  I64  [documents]; -1: the record did not give it
    metas            U8   UTF-8 JSON list of the documents' metadata objects (decoded only when a reader needs them)

docs/FORMAT.md is the spec. Manifests written before this (`snapshots/<sequence>.json`, the records inline) still
read (storage/snapshots.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .document_columns import DocumentColumns
from .errors import CorruptCacheError
from .index import CommitRecord
from .records import ArrayManifest

__all__ = ["MANIFEST_SUFFIX", "damaged_manifest", "decode_manifest", "encode_manifest", "manifest_fields"]

MANIFEST_SUFFIX = ".safetensors"
_META_KEY = "actcache"
_DTYPES: dict[str, np.dtype[Any]] = {"U8": np.dtype("u1"), "I64": np.dtype("<i8"), "F64": np.dtype("<f8")}


def encode_manifest(fields: dict[str, Any], records: Sequence[CommitRecord], columns: DocumentColumns) -> bytes:
    """The manifest of `records` (their documents: `columns`, same order), with `fields` (sequence, created, ...)."""
    from safetensors.numpy import save

    def text(value: Any) -> np.ndarray:
        return np.frombuffer(_json_bytes(value), dtype=np.uint8)

    arrays = [_json_bytes(r.unit_dict()["arrays"]) for r in records]
    tensors: dict[str, np.ndarray] = {
        "unit_ids": text([r.unit_id for r in records]), "segments": text([r.segment for r in records]),
        "fingerprints": text([r.fingerprint for r in records]),
        "created": np.array([r.created for r in records], dtype=np.float64),
        "arrays": np.frombuffer(b"".join(arrays), dtype=np.uint8),
        "array_offsets": np.cumsum([0] + [len(a) for a in arrays], dtype=np.int64),
        "unit_offsets": columns.unit_offsets, "keys": text(columns.keys), "n_tokens": columns.n_tokens,
        "original_tokens": columns.original_tokens, "metas": text(columns.metas)}
    return bytes(save({name: np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")) for name, a in tensors.items()},
                      metadata={_META_KEY: json.dumps(fields, sort_keys=True)}))


def manifest_fields(data: bytes, where: str) -> dict[str, Any]:
    """The manifest's own fields (sequence, created, listed_at, ...) from its header alone, before the columns are
    decoded: a reader starts listing the journal with them."""
    try:
        size = int.from_bytes(data[:8], "little")
        return dict(json.loads(json.loads(data[8:8 + size])["__metadata__"][_META_KEY]))
    except (KeyError, TypeError, ValueError) as error:
        raise damaged_manifest(where, error) from None


def decode_manifest(data: bytes, where: str) -> tuple[dict[str, Any], list[CommitRecord], DocumentColumns]:
    """(fields, records, their documents as columns); metadata is decoded when first read. `where` names the
    object in errors."""
    try:
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + size])
        fields = json.loads(header["__metadata__"][_META_KEY])
        base = 8 + size

        def tensor(name: str) -> np.ndarray:
            spec = header[name]
            begin, end = spec["data_offsets"]
            dtype = _DTYPES[spec["dtype"]]
            return np.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=base + begin)

        def text(name: str) -> Any:
            return json.loads(tensor(name).tobytes())

        units, segments, fingerprints = text("unit_ids"), text("segments"), text("fingerprints")
        created, offsets, keys = tensor("created").tolist(), tensor("unit_offsets"), text("keys")
        n_tokens, original = tensor("n_tokens"), tensor("original_tokens")
        if not (len(units) == len(segments) == len(fingerprints) == len(created) == len(offsets) - 1
                and offsets[-1] == len(keys) == len(n_tokens) == len(original)):
            raise ValueError(f"{len(units)} units, {len(offsets)} unit offsets, {len(keys)} keys, "
                             f"{len(n_tokens)} token counts")
        columns = DocumentColumns(offsets, keys, n_tokens, original, _checked(lambda: text("metas"), len(keys), where))
        arrays, bounds = tensor("arrays").tobytes(), tensor("array_offsets").tolist()
        if len(bounds) != len(units) + 1 or bounds[-1] != len(arrays):
            raise ValueError(f"{len(bounds)} array offsets for {len(units)} units")
        records = [CommitRecord(unit_id, segment, fingerprint, documents,
                                _UnitArrays(arrays[bounds[u]:bounds[u + 1]], f"{where}, unit {unit_id}"), when)
                   for u, (unit_id, segment, fingerprint, documents, when)
                   in enumerate(zip(units, segments, fingerprints, columns.unit_documents(), created, strict=True))]
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise damaged_manifest(where, error) from None
    return fields, records, columns


def damaged_manifest(where: str, error: Exception) -> CorruptCacheError:
    """The error for a manifest that does not read, with the fix (it is a cache of the records: rebuild it)."""
    return CorruptCacheError(f"{where} is not a valid manifest ({error!r}): delete it and run `actcache compact` "
                             "(the commit records are intact)")


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _checked(decode: Callable[[], list[Any]], count: int, where: str) -> Callable[[], list[Any]]:
    """`decode`, refusing a list of another length (a damaged manifest) when it runs."""
    def run() -> list[Any]:
        try:
            values = decode()
            if not isinstance(values, list) or len(values) != count:
                raise ValueError(f"expected a list of {count}")
        except (KeyError, TypeError, ValueError) as error:
            raise damaged_manifest(where, error) from None
        return values
    return run


class _UnitArrays(Mapping[str, ArrayManifest]):
    """`CommitRecord.arrays` of a manifest's unit: what its writer put in each array, decoded when first read."""

    def __init__(self, data: bytes, where: str) -> None:
        self._data: bytes | None = data
        self._where = where
        self._arrays: dict[str, ArrayManifest] = {}

    @property
    def _decoded(self) -> dict[str, ArrayManifest]:
        if self._data is not None:
            try:
                self._arrays = {name: ArrayManifest.from_dict(name, m) for name, m in json.loads(self._data).items()}
            except (KeyError, TypeError, ValueError, AttributeError) as error:
                raise damaged_manifest(self._where, error) from None
            self._data = None
        return self._arrays

    def __getitem__(self, name: str) -> ArrayManifest:
        return self._decoded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._decoded)

    def __len__(self) -> int:
        return len(self._decoded)
