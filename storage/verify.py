"""Check every commit record, every chunk's presence and every crc32c checksum; name the documents affected."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import zarr

from .backends.backend import StorageBackend
from .backends.backend_url import open_backend
from .commit_log import CommitLog
from .errors import CacheError
from .hook_points import is_integer_hook
from .index import CommitRecord
from .layout import COMMITS, DOC_OFFSETS, TOKEN_IDS, activation_name, segment_path
from .lossy import side_names
from .root import child_array, child_group, open_root, stored_row_chunks

__all__ = ["Problem", "VerifyReport", "verify_cache"]


@dataclass(frozen=True)
class Problem:
    where: str
    message: str
    documents: tuple[str, ...] = ()  # "key (source)" of each affected document


@dataclass
class VerifyReport:
    units: int = 0
    documents: int = 0
    chunks: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_cache(location: str | os.PathLike[str], progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Read every committed chunk once. `progress` is called with the number of chunks just checked."""
    backend = open_backend(location)
    group, fingerprint = open_root(backend)
    log = CommitLog(backend, COMMITS)
    expected = [activation_name(h, layer) for h in fingerprint.capture.hooks for layer in fingerprint.capture.layers]
    capture = fingerprint.capture  # fp8/int8 codes' scales and outliers (storage/lossy.py)
    expected += [side for h in capture.hooks if not is_integer_hook(h) for layer in capture.layers
                 for side in side_names(h, layer, capture.store_as, capture.outliers)]
    report = VerifyReport()
    for name in log.names():
        try:
            record = CommitRecord.from_dict(log.get(name))
        except (ValueError, KeyError, TypeError) as error:
            report.problems.append(Problem(f"commits/{name}", f"unreadable commit record ({error})"))
            continue
        report.units += 1
        report.documents += len(record.documents)
        if record.fingerprint != fingerprint.digest:
            report.problems.append(Problem(f"commits/{name}", "commit belongs to a different fingerprint"))
        _verify_unit(backend, group, record, expected, report, progress)
    from .annotations import check_versions  # the label versions beside the commits

    report.problems += [Problem(where, message) for where, message in check_versions(backend)]
    return report


def _labels(record: CommitRecord, first_row: int, stop_row: int) -> tuple[str, ...]:
    labels, start = [], 0
    for doc in record.documents:
        if start < stop_row and start + doc.n_tokens > first_row:
            labels.append(f"{doc.key} ({doc.meta.get('source', 'no source')})")
        start += doc.n_tokens
    return tuple(labels)


def _verify_unit(backend: StorageBackend, group: zarr.Group, record: CommitRecord, expected: list[str],
                 report: VerifyReport, progress: Callable[[int], None] | None) -> None:
    seg = segment_path(record.segment)
    n_tokens = sum(d.n_tokens for d in record.documents)
    everyone = _labels(record, 0, n_tokens)
    try:
        seg_group = child_group(group, seg)
        offsets = np.asarray(child_array(seg_group, DOC_OFFSETS)[:])
        token_ids = np.asarray(child_array(seg_group, TOKEN_IDS)[:])
        if len(token_ids) != n_tokens:
            raise CacheError(f"{len(token_ids)} token ids for {n_tokens} tokens")
    except Exception as error:  # noqa: BLE001 - any failure here means the unit's metadata is unusable
        report.problems.append(Problem(seg, f"segment metadata unreadable or inconsistent ({error})", everyone))
        return
    if offsets.tolist() != np.concatenate([[0], np.cumsum([d.n_tokens for d in record.documents])]).tolist():
        report.problems.append(Problem(seg, "doc_offsets disagree with the commit record", everyone))
    for name in expected:
        manifest = record.arrays.get(name)
        if manifest is None:
            report.problems.append(Problem(f"{seg}/{name}", "array missing from the commit record", everyone))
            continue
        try:
            array = child_array(seg_group, name)
        except (KeyError, CacheError):
            report.problems.append(Problem(f"{seg}/{name}", "array missing from the store", everyone))
            continue
        if tuple(array.shape) != manifest.shape:
            report.problems.append(Problem(f"{seg}/{name}", f"shape {array.shape} != committed {manifest.shape}",
                                           everyone))
            continue
        rows = manifest.chunk_rows
        present = stored_row_chunks(backend, f"{seg}/{name}")
        for i in range(manifest.n_chunks):
            where = f"{seg}/{name} chunk {i}"
            affected = _labels(record, i * rows, (i + 1) * rows)
            if i not in present:
                report.problems.append(Problem(where, "chunk file missing", affected))
                continue
            try:
                array[i * rows:(i + 1) * rows]
            except Exception as error:  # noqa: BLE001 - crc32c and codec failures come in several types
                report.problems.append(Problem(where, f"checksum or decode failed ({error})", affected))
            report.chunks += 1
            if progress is not None:
                progress(1)
