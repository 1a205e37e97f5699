"""The probe metrics against scikit-learn on predictions that hit the bin edges, 0 and 1, and empty bins."""

from __future__ import annotations

import numpy as np
import pytest
from actcache.solvers.analyses.probe_metrics import classify_metrics
from actcache.solvers.errors import SolverInputError
from probe_checks import check_classify


def test_classify_metrics_match_sklearn_with_edges_and_empty_bins():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(0.0, 0.4, 200) ** 2, np.arange(8) / 15, [0.0, 1.0, 1.0], rng.uniform(0.8, 1, 50)])
    y = (rng.uniform(size=len(p)) < p).astype(float)
    metrics = {**classify_metrics(y, p), "n_train": 0}
    assert any(b[4] == 0 and b[2] is None for b in metrics["reliability"])  # an empty bin is kept, with nulls
    check_classify(metrics, [{"label": float(v), "prediction": float(q)} for v, q in zip(y, p, strict=True)], None)


def test_a_one_class_test_split_is_refused():
    with pytest.raises(SolverInputError, match="AUROC needs both classes"):
        classify_metrics(np.ones(5), np.linspace(0, 1, 5))
