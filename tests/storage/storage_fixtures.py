"""Caches written straight through the storage API with random data: no model needed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from actcache.storage import CacheFingerprint, CacheWriter, CaptureSpec, DocRecord
from actcache.storage.layout import activation_name

WIDTHS = {"resid_post": 16, "attn_z": 12}


def make_fingerprint(dtype: str = "float32", layers: tuple[int, ...] = (1, 3)) -> CacheFingerprint:
    return CacheFingerprint(
        model={"architecture": "Test", "config": {"hidden_size": 16}},
        tokenizer={"backend_sha256": "abc"},
        dtype=dtype,
        capture=CaptureSpec(hooks=("resid_post", "attn_z"), layers=layers, max_length=4096),
        widths=dict(WIDTHS),
        hook_attrs={"attn_z": {"n_heads": 3, "head_dim": 4}},
    )


@dataclass
class WrittenCache:
    path: Path
    docs: list[DocRecord]
    values: dict[tuple[str, int, str], np.ndarray]  # (hook, layer, key) -> rows as stored
    token_ids: dict[str, np.ndarray]


def write_unit(writer: CacheWriter, unit_id: str, lengths: list[int], rng: np.random.Generator,
               out: WrittenCache, rows_per_append: int = 37, commit: bool = True) -> str:
    """Write one unit with random rows, appended in odd-sized pieces to exercise chunk alignment."""
    fp = writer.fingerprint
    docs = [DocRecord(f"{unit_id}-doc{i}", n, {"source": f"{unit_id}.txt", "index": i}) for i, n in enumerate(lengths)]
    total = sum(lengths)
    ids = rng.integers(0, 1000, total)
    segment = writer.begin_segment(unit_id, docs, ids)
    seg_writer = writer.segment_writer(segment)
    for hook in fp.capture.hooks:
        for layer in fp.capture.layers:
            rows = rng.standard_normal((total, fp.widths[hook])).astype(np.float32)
            if fp.dtype == "bfloat16":
                rows = rng.integers(0, 1 << 16, (total, fp.widths[hook])).astype(np.uint16)
                rows[(rows & 0x7F80) == 0x7F80] = 0  # no NaN/inf bit patterns
            elif fp.dtype == "float16":
                rows = rows.astype(np.float16)
            for start in range(0, total, rows_per_append):
                seg_writer.append(activation_name(hook, layer), rows[start:start + rows_per_append])
            offset = 0
            for doc in docs:
                out.values[(hook, layer, doc.key)] = rows[offset:offset + doc.n_tokens]
                offset += doc.n_tokens
    manifests = seg_writer.close()
    offset = 0
    for doc in docs:
        out.token_ids[doc.key] = ids[offset:offset + doc.n_tokens]
        offset += doc.n_tokens
    if commit:
        assert writer.commit(unit_id, segment, docs, manifests)
        out.docs.extend(docs)
    return segment


@pytest.fixture()
def written_cache(tmp_path: Path) -> WrittenCache:
    """Two committed units, one with a document longer than several chunks."""
    rng = np.random.default_rng(0)
    out = WrittenCache(tmp_path / "cache", [], {}, {})
    writer = CacheWriter.open(out.path, make_fingerprint())
    write_unit(writer, "unit-a", [5, 3000, 1, 40], rng, out)
    write_unit(writer, "unit-b", [700, 9], rng, out)
    return out
