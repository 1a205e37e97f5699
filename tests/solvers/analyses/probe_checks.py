"""Every probe metric recomputed with scikit-learn/scipy from the probe's own predictions.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LinearRegression
from sklearn.metrics import (
    accuracy_score,
    adjusted_rand_score,
    brier_score_loss,
    mean_absolute_error,
    normalized_mutual_info_score,
    roc_auc_score,
)

CLOSE = {"rel": 1e-9, "abs": 1e-12}


def predictions(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def check_classify(m: dict, test: list[dict], positive: str | None) -> None:
    y = np.array([float(str(r["label"]) == positive) if positive else float(r["label"]) for r in test])
    p = np.array([r["prediction"] for r in test])
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p), **CLOSE)
    assert m["brier"] == pytest.approx(brier_score_loss(y, p), **CLOSE)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5), **CLOSE)
    assert m["base_rate"] == pytest.approx(y.mean(), **CLOSE)
    bins = m["reliability"]
    assert len(bins) == 15 and bins[0][0] == 0.0 and bins[-1][1] == 1.0
    frac_pos, mean_pred = calibration_curve(y, p, n_bins=15, strategy="uniform")
    filled = [b for b in bins if b[4]]
    assert [b[3] for b in filled] == pytest.approx(frac_pos, **CLOSE)
    assert [b[2] for b in filled] == pytest.approx(mean_pred, **CLOSE)
    # counts: bin k holds lo < p <= hi (the first bin also p = 0), as calibration_curve bins
    counts = [int((((p > lo) | (k == 0)) & (p <= hi)).sum()) for k, (lo, hi, *_rest) in enumerate(bins)]
    assert [b[4] for b in bins] == counts and sum(counts) == len(p)
    nonzero = np.array([c for c in counts if c])
    assert m["ece"] == pytest.approx(float((nonzero / len(p) * np.abs(frac_pos - mean_pred)).sum()), **CLOSE)


def check_against_sklearn(out: Path, task: str, positive: str | None = None) -> dict:
    """Recompute metrics.json from predictions.jsonl; returns the metrics."""
    metrics = json.loads((out / "metrics.json").read_text())
    rows = predictions(out)
    for layer, m in metrics.items():
        mine = [r for r in rows if r["layer"] == int(layer)]
        test = [r for r in mine if r["split"] == "test"]
        train = [r for r in mine if r["split"] == "train"]
        assert m["n_test"] == len(test) and m["n_train"] == len(train)
        if task == "classify":
            check_classify(m, test, positive)
        elif task == "regress":
            y, p = np.array([r["label"] for r in test]), np.array([r["prediction"] for r in test])
            assert m["pearson"] == pytest.approx(pearsonr(y, p)[0], **CLOSE)
            assert m["mae"] == pytest.approx(mean_absolute_error(y, p), **CLOSE)
            recal = LinearRegression().fit(np.array([[r["prediction"]] for r in train]), [r["label"] for r in train])
            assert m["mae_recalibrated"] == pytest.approx(mean_absolute_error(y, recal.predict(p[:, None])), **CLOSE)
        else:
            labels, clusters = [str(r["label"]) for r in test], [r["prediction"] for r in test]
            assert m["nmi"] == pytest.approx(normalized_mutual_info_score(labels, clusters), **CLOSE)
            assert m["ari"] == pytest.approx(adjusted_rand_score(labels, clusters), **CLOSE)
    return metrics
