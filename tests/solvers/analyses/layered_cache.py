"""A small cache with planted layer geometry, written straight through the storage API (no model).

Layers 0-2 of resid_post are noisy linear maps of one token signal (0 with a large offset), layer 3 is unrelated
noise; mlp_act is a ReLU of a projection (exact zeros: a real sparsity); router_experts holds random expert ids.
Metadata: `split` (every 4th document is test), `concept` (c0..c2; its residuals carry a concept direction) and
`score` (a number tied to the concept).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LAYERS = (0, 1, 2, 3)
WIDTH, D_FF = 12, 20


def _layer_rows(rng: np.random.Generator, n: int, concept_of_row: np.ndarray) -> dict[tuple[str, int], np.ndarray]:
    fixed = np.random.default_rng(1234)  # the same maps and concept directions in every unit
    concepts, a1, a2, w = (fixed.standard_normal((3, WIDTH)), fixed.standard_normal((WIDTH, WIDTH)),
                           fixed.standard_normal((WIDTH, WIDTH)), fixed.standard_normal((WIDTH, D_FF)))
    signal = rng.standard_normal((n, WIDTH)) + 2.5 * concepts[concept_of_row]  # (n, d)
    resid = {0: 40.0 + signal, 1: signal @ a1 + 0.1 * rng.standard_normal((n, WIDTH))}
    resid[2] = resid[1] @ a2 + 0.3 * rng.standard_normal((n, WIDTH))
    resid[3] = rng.standard_normal((n, WIDTH))
    rows = {("resid_post", k): v.astype(np.float32) for k, v in resid.items()}
    rows.update({("mlp_act", k): np.maximum(resid[k] @ w / 4, 0).astype(np.float32) for k in LAYERS})
    rows.update({("router_experts", k): rng.integers(0, 8, (n, 2)).astype(np.int16) for k in LAYERS})  # ids
    return rows


def write_layered_cache(path: Path, n_docs: int = 48, seed: int = 0, nan_row: int | None = None) -> Path:
    """The planted cache; `nan_row` (a token row of the first unit) gets a NaN in every resid_post layer."""
    from actcache.storage import CacheFingerprint, CacheWriter, CaptureSpec, DocRecord
    from actcache.storage.layout import activation_name

    rng = np.random.default_rng(seed)
    widths = {"resid_post": WIDTH, "mlp_act": D_FF, "router_experts": 2}
    fingerprint = CacheFingerprint(model={"architecture": "Planted", "config": {"hidden_size": WIDTH}},
                                   tokenizer={"backend_sha256": "planted"}, dtype="float32",
                                   capture=CaptureSpec(hooks=tuple(widths), layers=LAYERS, max_length=1 << 20),
                                   widths=widths)
    writer = CacheWriter.open(path, fingerprint)
    for unit in range(2):  # two committed units: the streams cross a segment boundary
        docs = []
        for i in range(unit * n_docs // 2, (unit + 1) * n_docs // 2):
            concept = i % 3
            docs.append(DocRecord(f"doc{i:04d}", int(rng.integers(3, 13)),
                                  {"split": "test" if i % 4 == 3 else "train", "concept": f"c{concept}",
                                   "score": float(concept) + 0.1 * (i % 5), "index": i}))
        total = sum(d.n_tokens for d in docs)
        concept_of_row = np.repeat([int(d.meta["concept"][1]) for d in docs], [d.n_tokens for d in docs])
        segment = writer.begin_segment(f"unit{unit}", docs, rng.integers(0, 100, total))
        seg_writer = writer.segment_writer(segment)
        for (hook, layer), rows in _layer_rows(rng, total, concept_of_row).items():
            if nan_row is not None and unit == 0 and hook == "resid_post":
                rows[nan_row, 0] = np.nan
            seg_writer.append(activation_name(hook, layer), rows)
        assert writer.commit(f"unit{unit}", segment, docs, seg_writer.close())
    return path
