"""SmolLM2 on the sentiment JSONL: the solve against an independent reference, and the semantic test
(a CAA direction from the train split separates the held-out test split)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from actcache.solvers import projection_auroc, read_readout
from actcache.solvers.job import SolveResult, SolveSettings, solve_cache
from actcache.solvers.job_inputs import LabelSpec
from actcache.storage import open_cache
from job_fixtures import (
    build,
    cosine,
    pool,
    reference_caa,
    reference_forward,
    reference_heads,
    reference_quality,
    reference_subspace,
)

SENTIMENT = Path(__file__).resolve().parent.parent / "data" / "sentiment.jsonl"
LAYERS = [8, 15]  # 15 is the middle of SmolLM2's 30 layers
LABELS = LabelSpec(label_field="sentiment", positive="positive", split_field="split")


@pytest.fixture(scope="module")
def smollm2_solve(tmp_path_factory, smollm2_dir) -> tuple[Path, Path, SolveResult]:
    root = tmp_path_factory.mktemp("smollm2-job")
    cache = build(smollm2_dir, SENTIMENT, root / "cache", "8,15")
    result = solve_cache(cache, root / "out", SolveSettings(layers="8,15", pooling="last", labels=LABELS))
    return cache, root / "out", result


def test_smollm2_solve_matches_independent_reference(smollm2_solve, smollm2_dir):
    cache_path, out, _ = smollm2_solve
    reader = open_cache(cache_path)
    docs = reader.documents()
    ref = reference_forward(smollm2_dir, [reader.token_ids(d.key) for d in docs], LAYERS)
    train = [i for i, d in enumerate(docs) if d.meta["split"] == "train"]
    pos = [i for i in train if docs[i].meta["sentiment"] == "positive"]
    neg = [i for i in train if i not in pos]
    quality = json.loads((out / "quality.json").read_text())["positive"]["layers"]
    caa_file, subspace_file = read_readout(out), read_readout(out, "subspace")
    n_heads, _ = reader.head_shape("attn_z")
    for layer in LAYERS:
        x = np.stack([pool(h, "last") for h in ref.resid[layer]])
        caa, diff = reference_caa(x, pos, neg)
        assert cosine(caa_file.vectors[layer][0].double().numpy(), caa) >= 0.999
        sub, _ = reference_subspace(ref.resid[layer], pos, neg, diff)
        assert cosine(subspace_file.vectors[layer][0].double().numpy(), sub) >= 0.999
        z = np.stack([pool(h, "last") for h in ref.attn[layer]])
        top, _, concentration = reference_heads(z, pos, neg, n_heads)
        got = quality[str(layer)]
        assert [h[0] for h in got["top_heads"]] == top
        assert got["head_concentration"] == pytest.approx(concentration, abs=1e-4)
        for field, value in reference_quality(x[pos], caa, ref.w_down[layer]).items():
            assert got[field] == pytest.approx(value, rel=1e-4, abs=1e-4), (layer, field)
        assert got["ridge_r2"] == 0.0  # one concept: nothing to reconstruct it from


def test_caa_from_train_separates_the_test_split(smollm2_solve):
    cache_path, out, result = smollm2_solve
    reader = open_cache(cache_path)
    vector = read_readout(out).vectors[15][0]  # (d,) from the train split only
    test = [d for d in reader.documents() if d.meta["split"] == "test"]
    pooled = np.stack([reader.activations("resid_post", 15, d.key)[-1] for d in test])
    labels = [0 if d.meta["sentiment"] == "positive" else -1 for d in test]
    import torch

    (auroc,) = projection_auroc(vector[None], torch.from_numpy(pooled), labels)
    assert auroc >= 0.9
    assert result.evaluation["caa"][15]["auroc"][0] == pytest.approx(auroc, abs=1e-3)
    assert result.evaluation["caa"][15]["balanced_accuracy"][0] >= 0.8
