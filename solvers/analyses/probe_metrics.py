"""Held-out metrics of a probe, each from scikit-learn or scipy on the probe's predictions.

Calibration uses 15 equal-width bins of P(positive) on [0, 1], the bins of scikit-learn's `calibration_curve`
(`strategy="uniform"`: bin ids from `searchsorted` on the inner edges, so p = 1 falls in the last bin).
`calibration_curve` drops empty bins; the reliability list keeps all 15 as
`[bin_lo, bin_hi, mean_pred, frac_pos, count]` (means null in an empty bin), and
`ECE = sum_b count_b / n * |frac_pos_b - mean_pred_b|` over the non-empty bins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from actcache.solvers.errors import SolverInputError

__all__ = ["ECE_BINS", "classify_metrics", "cluster_metrics", "regress_metrics", "reliability_bins"]

ECE_BINS = 15


def reliability_bins(y: np.ndarray, p: np.ndarray, n_bins: int = ECE_BINS) -> tuple[list[list[Any]], float]:
    """(one `[bin_lo, bin_hi, mean_pred, frac_pos, count]` per bin, ECE), binned as `calibration_curve` bins."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], p)  # calibration_curve's own binning
    count = np.bincount(ids, minlength=n_bins)
    pred_sum = np.bincount(ids, weights=p, minlength=n_bins)
    pos_sum = np.bincount(ids, weights=y, minlength=n_bins)
    bins: list[list[Any]] = []
    ece = 0.0
    for b in range(n_bins):
        if count[b]:
            mean_pred, frac_pos = pred_sum[b] / count[b], pos_sum[b] / count[b]
            ece += count[b] / len(p) * abs(frac_pos - mean_pred)
            bins.append([float(edges[b]), float(edges[b + 1]), float(mean_pred), float(frac_pos), int(count[b])])
        else:
            bins.append([float(edges[b]), float(edges[b + 1]), None, None, 0])
    return bins, float(ece)


def classify_metrics(y: Sequence[float] | np.ndarray, p: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """AUROC, ECE, Brier, reliability bins, accuracy at 0.5 and base rate of binary labels `y` against
    P(positive) `p` (the test split)."""
    from sklearn.metrics import accuracy_score, brier_score_loss, roc_auc_score

    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if len(np.unique(y)) < 2:
        raise SolverInputError(f"the test split has only {'positives' if y.any() else 'negatives'} ({len(y)} "
                               f"samples): AUROC needs both classes; move some of the other class to the test split")
    bins, ece = reliability_bins(y, p)
    return {"auroc": float(roc_auc_score(y, p)), "ece": ece, "brier": float(brier_score_loss(y, p)),
            "accuracy": float(accuracy_score(y, p >= 0.5)), "base_rate": float(y.mean()), "reliability": bins,
            "n_test": len(y)}


def regress_metrics(y_test: np.ndarray, pred_test: np.ndarray, y_train: np.ndarray,
                    pred_train: np.ndarray) -> dict[str, Any]:
    """Pearson r, MAE, and the MAE after an affine recalibration `a * pred + b` fitted (least squares) on train."""
    from scipy.stats import pearsonr
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import mean_absolute_error

    recal = LinearRegression().fit(np.asarray(pred_train, dtype=np.float64)[:, None], y_train)
    recalibrated = recal.predict(np.asarray(pred_test, dtype=np.float64)[:, None])
    return {"pearson": float(pearsonr(y_test, pred_test).statistic),
            "mae": float(mean_absolute_error(y_test, pred_test)),
            "mae_recalibrated": float(mean_absolute_error(y_test, recalibrated)),
            "recalibration": [float(recal.coef_[0]), float(recal.intercept_)], "n_test": len(y_test)}


def cluster_metrics(labels: Sequence[Any] | np.ndarray, clusters: Sequence[int] | np.ndarray) -> dict[str, Any]:
    """NMI and ARI of the k-means assignments against the labels (test split)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    names = [str(v) for v in labels]
    return {"nmi": float(normalized_mutual_info_score(names, clusters)),
            "ari": float(adjusted_rand_score(names, clusters)), "n_test": len(names)}
