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
    SAME,
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
        assert cosine(caa_file.vectors[layer][0].double().numpy(), caa) >= SAME
        sub, _ = reference_subspace(ref.resid[layer], pos, neg, diff)
        assert cosine(subspace_file.vectors[layer][0].double().numpy(), sub) >= SAME
        z = np.stack([pool(h, "last") for h in ref.attn[layer]])
        top, _, concentration = reference_heads(z, pos, neg, n_heads)
        got = quality[str(layer)]
        assert [h[0] for h in got["top_heads"]] == top
        assert n_heads == 9 and got["head_concentration"] is None  # top 10 of 9 heads would always be 1.0
        for field, value in reference_quality(x[pos], caa, ref.w_down[layer]).items():
            assert got[field] == pytest.approx(value, rel=1e-4, abs=1e-4), (layer, field)
        assert got["ridge_r2"] is None  # one concept: nothing to reconstruct it from


def test_caa_from_train_separates_the_test_split(smollm2_solve):
    cache_path, out, result = smollm2_solve
    reader = open_cache(cache_path)
    vector = read_readout(out).vectors[15][0]  # (d,) from the train split only
    test = [d for d in reader.documents() if d.meta["split"] == "test"]
    pooled = np.stack([reader.activations("resid_post", 15, d.key)[-1] for d in test])
    labels = np.array([[d.meta["sentiment"] == "positive"] for d in test])  # (documents, 1 concept)
    import torch

    (auroc,) = projection_auroc(vector[None], torch.from_numpy(pooled), labels)
    assert auroc >= 0.9
    assert result.evaluation["caa"][15]["auroc"][0] == pytest.approx(auroc, abs=1e-3)
    assert result.evaluation["caa"][15]["balanced_accuracy"][0] >= 0.8


def test_smollm2_report_leads_with_heldout_scores_and_says_n_a(smollm2_solve):
    _, out, result = smollm2_solve
    report = (out / "report.md").read_text()
    for layer in LAYERS:  # one concept: the layer's mean is that concept's score
        auroc = result.evaluation["caa"][layer]["auroc"][0]
        assert f"| {layer} | {auroc:.3f} | " in report
    assert "**Best layer: " in report
    assert "head conc. n/a: the model has 9 attention heads" in report  # top 10 of 9 heads would be 1.0
    assert "ridge R² and nearest concept n/a" in report
    (row,) = [line for line in report.splitlines() if line.startswith("| positive | ") and line.count("|") == 9]
    assert row.endswith("| n/a | n/a | n/a |")  # ridge R², nearest concept, head concentration



def test_mean_pooling_warns_about_the_attention_sink(smollm2_solve, tmp_path):
    """SmolLM2 puts most of a document's token norm on position 0 (the attention sink): plain mean pooling
    is warned about, naming the position and mean-skip:1; mean-skip:1 itself is not."""
    from actcache.solvers.sweep import SweepSettings, sweep_cache

    cache_path, _, _ = smollm2_solve
    reader = open_cache(cache_path)
    shares = []  # independent: position 0's share of the summed token norms, per document, at layer 15
    for doc in reader.documents():
        norms = np.linalg.norm(reader.activations("resid_post", 15, doc.key).astype(np.float64), axis=1)
        shares.append(norms[0] / norms.sum())
    assert np.mean(shares) > 0.5  # the premise, measured without the solver code
    result = sweep_cache(cache_path, tmp_path / "sweep", SweepSettings(
        poolings=("mean", "mean-skip:1"), methods=("caa",), layers="15", labels=LABELS))
    (note,) = result.notes
    assert note.startswith("pooling mean: token position 0 carries") and "use --pooling mean-skip:1" in note
    assert f"{np.mean(shares):.0%}" in note
    assert "note: pooling mean" in result.summary()
    assert "note: pooling mean" in (tmp_path / "sweep" / "comparison.md").read_text()
