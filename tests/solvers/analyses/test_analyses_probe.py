"""`actcache probe` on the planted cache: metrics recomputed with scikit-learn/scipy from predictions.jsonl, the
streamed token-level probes against scikit-learn fitted on the materialised tokens, and the refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from actcache.solvers.analyses.probe import ProbeSettings, probe_cache
from actcache.solvers.errors import SolverInputError
from actcache.storage import open_cache
from actcache.storage.annotations import relabel
from layered_cache import write_layered_cache
from probe_checks import check_against_sklearn, predictions

TASKS = [("classify", "concept", "c0"), ("regress", "score", None), ("cluster", "concept", None)]


@pytest.mark.parametrize("pooling", ["mean", "token"])
@pytest.mark.parametrize(("task", "field", "positive"), TASKS)
def test_probe_metrics_match_sklearn_on_its_predictions(layered_cache, tmp_path, task, field, positive, pooling):
    settings = ProbeSettings(label_field=field, task=task, layers="0,3", pooling=pooling, positive=positive)
    result = probe_cache(layered_cache, tmp_path / "out", settings)
    metrics = check_against_sklearn(tmp_path / "out", task, positive)
    assert metrics == result.metrics and set(metrics) == {"0", "3"}
    rows = predictions(tmp_path / "out")
    docs = {d.key: d for d in open_cache(layered_cache).documents()}
    assert {r["split"] for r in rows} == {"train", "test"}
    assert all(r["split"] == docs[r["key"]].meta["split"] for r in rows)
    if pooling == "token":
        assert len(rows) == 2 * sum(d.n_tokens for d in docs.values())
        assert all(0 <= r["token_index"] < docs[r["key"]].n_tokens for r in rows)
    else:
        assert len(rows) == 2 * len(docs) and all(r["token_index"] is None for r in rows)
    # layer 0 carries the label (planted); layer 3 is unrelated noise (its score is chance, on 12 test documents)
    assert metrics["0"][{"classify": "auroc", "regress": "pearson", "cluster": "nmi"}[task]] > 0.9


def _tokens(layered_cache, layer: int, field: str):
    reader = open_cache(layered_cache)
    out = {"train": ([], []), "test": ([], [])}
    for doc in reader.documents():
        x = reader.activations("resid_post", layer, doc.key).astype(np.float64)
        out[doc.meta["split"]][0].append(x)
        out[doc.meta["split"]][1].extend([doc.meta[field]] * len(x))
    return {s: (np.concatenate(x), np.array(y)) for s, (x, y) in out.items()}


@pytest.mark.parametrize("layer", [0, 3])
def test_streamed_token_probes_reach_sklearns_optimum(layered_cache, tmp_path, layer):
    """Newton passes (logistic) and sufficient statistics (ridge) find what scikit-learn finds on all tokens."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.preprocessing import StandardScaler

    for task, field, positive in TASKS[:2]:
        out = tmp_path / task
        probe_cache(layered_cache, out, ProbeSettings(label_field=field, task=task, layers=str(layer),
                                                      pooling="token", positive=positive))
        got = np.array([r["prediction"] for r in predictions(out) if r["split"] == "test"])
        data = _tokens(layered_cache, layer, field)
        (x_tr, y_tr), (x_te, _) = data["train"], data["test"]
        scaler = StandardScaler().fit(x_tr)
        if task == "classify":
            model = LogisticRegression(C=1.0, tol=1e-12, max_iter=100_000).fit(scaler.transform(x_tr), y_tr == positive)
            want = model.predict_proba(scaler.transform(x_te))[:, 1]
        else:
            want = Ridge(alpha=1.0).fit(scaler.transform(x_tr), y_tr).predict(scaler.transform(x_te))
        # predictions in the test split's storage order = documents() order here (one key order in both)
        np.testing.assert_allclose(got, want, atol=2e-5)


def test_per_token_labels_are_used_and_checked(tmp_path):
    cache = write_layered_cache(tmp_path / "cache")
    docs = open_cache(cache).documents()
    labels = {d.key: {**d.meta, "token_labels": [None] * 2 + [d.meta["concept"]] * (d.n_tokens - 2)} for d in docs}
    relabel(cache, labels, "token labels")
    probe_cache(cache, tmp_path / "out", ProbeSettings(label_field="token_labels", layers="0", pooling="token",
                                                       positive="c1"))
    rows = predictions(tmp_path / "out")
    assert len(rows) == sum(d.n_tokens - 2 for d in docs) and min(r["token_index"] for r in rows) == 2
    check_against_sklearn(tmp_path / "out", "classify", "c1")

    bad = docs[5]
    relabel(cache, {bad.key: {**bad.meta, "token_labels": ["c1"] * (bad.n_tokens + 1)}}, "one label too many")
    with pytest.raises(SolverInputError, match=f"{bad.n_tokens + 1} values in 'token_labels' but {bad.n_tokens} "
                                               f"tokens after tokenization"):
        probe_cache(cache, tmp_path / "out2", ProbeSettings(label_field="token_labels", pooling="token",
                                                            positive="c1"))
    with pytest.raises(SolverInputError, match="needs --pooling token"):
        probe_cache(cache, tmp_path / "out3", ProbeSettings(label_field="token_labels", positive="c1"))


@pytest.mark.parametrize(("settings", "message"), [
    (ProbeSettings(label_field="concept"), "name the positive class with --positive"),
    (ProbeSettings(label_field="concept", positive="c9"), "no label of 'concept' is 'c9'"),
    (ProbeSettings(label_field="concept", task="regress"), "--task regress needs finite numbers"),
    (ProbeSettings(label_field="colour", positive="red"), "no document has the label field 'colour'"),
    (ProbeSettings(label_field="concept", positive="c0", split_field=None), "pass --split-field"),
    (ProbeSettings(label_field="concept", positive="c0", hook="attn_z"), "no 'attn_z' activations"),
])
def test_probe_refuses_bad_input_with_the_fix(layered_cache, tmp_path, settings, message):
    with pytest.raises(SolverInputError, match=message):
        probe_cache(layered_cache, tmp_path / "out", settings)
    assert not (tmp_path / "out").exists()


def test_probe_output_names(layered_cache, tmp_path):
    probe_cache(layered_cache, tmp_path / "out", ProbeSettings(label_field="concept", positive="c0", layers="1"))
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert {"auroc", "ece", "brier", "accuracy", "base_rate", "reliability"} <= set(metrics["1"])
    assert set(predictions(tmp_path / "out")[0]) == {"layer", "key", "token_index", "split", "label", "prediction"}
