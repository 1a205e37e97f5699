"""`CacheReader.info()`: a cache's identities kept apart, what it holds, and its bytes on disk.

Three identities, each answering its own question: the model digest (weights + config: "is this the same model?",
the same whatever was captured), the capture spec (hooks, layers, dtype, cut: "what was stored?") and the cache
fingerprint (all of it plus the tokenizer: "may I append to this cache?").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .disk_usage import disk_usage
from .dtypes import storage_dtype
from .fingerprint import canonical_json, digest
from .hook_points import array_dtype
from .lossy import combine
from .snapshots import SnapshotLog

if TYPE_CHECKING:
    from .index import CommitRecord
    from .reader import CacheReader

__all__ = ["cache_info", "duplicate_documents", "label_summary", "lossy_error"]

MOST_COMMON = 3  # values shown per label field


def cache_info(reader: CacheReader) -> dict[str, Any]:
    """The JSON of `actcache info --json` (storage/cli.py formats it as text)."""
    fp, records = reader.fingerprint, reader.commit_records()
    row_bytes = sum(fp.widths[h] * storage_dtype(array_dtype(h, fp.dtype)).itemsize for h in fp.capture.hooks)
    committed = {r.segment for r in records}
    raw = sum(sum(d.n_tokens for d in r.documents) for r in records) * row_bytes * len(fp.capture.layers)
    usage = disk_usage(reader.backend, committed)
    source = reader.model_source or {}
    documents = reader.documents()
    return {
        "path": reader.url,
        "model": {"name": source.get("name") or (Path(source["path"]).name if source.get("path") else None),
                  "architecture": fp.model.get("architecture"),
                  "digest": fp.model_digest[:16]},  # weights + config only
        "tokenizer_digest": digest(fp.tokenizer)[:16],
        "cache_fingerprint": fp.digest[:16],  # model + tokenizer + dtype + capture spec: what an append must match
        "dtype": fp.dtype,
        "store_as": fp.capture.store_as,  # exact, or a lossy mode (storage/lossy.py)
        "outliers": fp.capture.outliers,  # fp8/int8: values per token kept exactly beside the codes
        "hooks": list(fp.capture.hooks),
        "layers": list(fp.capture.layers),
        "widths": dict(fp.widths),
        "max_length": fp.capture.max_length,
        "truncation_side": fp.capture.truncation_side,
        "documents": len(documents),
        "tokens": sum(d.n_tokens for d in documents),
        "duplicate_documents": duplicate_documents(records),
        "units": len(records),
        "truncated_documents": sum(1 for d in documents if d.original_tokens > d.n_tokens),
        "label_fields": label_summary(d.meta for d in documents),
        "bytes_on_disk": usage.total,
        "activation_bytes_raw": raw,
        "activation_bytes_stored": usage.activations,  # committed units only, like the raw size
        "compression_ratio": raw / usage.activations if usage.activations else None,
        "lossy_error": lossy_error(records),
        "uncommitted_segments": usage.segments - len(committed),
        "uncommitted_bytes": usage.uncommitted,
        "annotation_versions": reader.annotation_versions(),
        "snapshot": {"sequence": reader.snapshot.sequence, "unfolded_commits": reader.snapshot.unfolded,
                     "tag": reader.tag},  # the state read: a manifest (0: none yet) plus commits it lacks
        "tags": [{"name": t.name, "snapshot": t.snapshot, "annotation_version": t.annotation_version,
                  "created": t.created} for t in SnapshotLog(reader.backend).tags()],
    }


def duplicate_documents(records: Iterable[CommitRecord]) -> int:
    """Documents stored by more than one commit: computed twice (writers whose claims lapsed, or an actcache
    without document claims); readers use the first commit's copy."""
    stored = Counter(doc.key for record in records for doc in record.documents)
    return sum(1 for n in stored.values() if n > 1)


def lossy_error(records: Iterable[CommitRecord]) -> dict[str, dict[str, Any]]:
    """Per lossy array (`<hook>/layer_<L>`): the error each commit measured against its exact values, combined
    over commits (storage/lossy.py `combine`); empty for an exact cache."""
    per_array: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        for name, manifest in record.arrays.items():
            if manifest.error is not None:
                per_array.setdefault(name, []).append(manifest.error)
    return {name: combine(errors) for name, errors in sorted(per_array.items())}


def label_summary(metas: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per label field: how many documents have it, how many distinct values, and the most common values with
    their counts (a list value, e.g. several concepts of one text, counts each element)."""
    counts: dict[str, Counter[Any]] = {}
    holders: Counter[str] = Counter()
    for meta in metas:
        for name, value in meta.items():
            holders[name] += 1
            values = value if isinstance(value, list) else [value]
            counts.setdefault(name, Counter()).update(v if _hashable(v) else canonical_json(v) for v in values)
    return {
        name: {"documents": holders[name], "distinct": len(counts[name]),
               "most_common": [[value, n] for value, n in counts[name].most_common(MOST_COMMON)]}
        for name in sorted(counts)
    }


def _hashable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None
