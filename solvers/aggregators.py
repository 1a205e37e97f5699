"""Aggregators of paired samples (steering-vectors' functional API, plus repeng's PCA variants).

An `Aggregator` maps (pos, neg), both (n, d) with row i of each forming a pair, to one unit vector (d,).
Factories hold the settings, the call takes the data: `mean_aggregator()(pos, neg)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from actcache.solvers.caa import normalize
from actcache.solvers.errors import SolverInputError
from actcache.solvers.labels import LabelSets
from actcache.solvers.logistic_lbfgs import LBFGS_DEFAULTS, lbfgs_logistic
from actcache.solvers.sufficient_stats import PooledStore
from torch import Tensor

Aggregator = Callable[[Tensor, Tensor], Tensor]


def _deltas(pos: Tensor, neg: Tensor) -> Tensor:
    if pos.shape != neg.shape or pos.ndim != 2 or pos.shape[0] == 0:
        raise SolverInputError(
            f"aggregators need paired samples of equal shape (n >= 1, d), got {tuple(pos.shape)} and "
            f"{tuple(neg.shape)}: pair each positive with a negative"
        )
    return pos.double() - neg.double()  # (n, d)


def _top_right_singular(x: Tensor) -> Tensor:
    return torch.linalg.svd(x, full_matrices=False)[2][0]  # (d,)


def _majority_sign(deltas: Tensor, v: Tensor) -> Tensor:
    """repeng's orientation: flip when more pairs project the positive below the negative than above."""
    proj = deltas @ v  # (n,)
    return -v if int((proj < 0).sum()) > int((proj > 0).sum()) else v


def _out(v: Tensor, like: Tensor) -> Tensor:
    return normalize(v).to(like.device, torch.float32)


def mean_aggregator() -> Aggregator:
    """Mean of D = pos - neg."""

    def aggregate(pos: Tensor, neg: Tensor) -> Tensor:
        return _out(_deltas(pos, neg).mean(dim=0), pos)

    return aggregate


def pca_aggregator() -> Aggregator:
    """Top right singular vector of the uncentred [D; -D], oriented so that mean(D v) > 0."""

    def aggregate(pos: Tensor, neg: Tensor) -> Tensor:
        d = _deltas(pos, neg)
        v = _top_right_singular(torch.cat([d, -d]))
        return _out(v if float((d @ v).mean()) >= 0 else -v, pos)

    return aggregate


def _sklearn_rows(d: Tensor) -> tuple[Any, Any]:
    """Rows +D/2 (label 1) and -D/2 (label 0): each sample centred on its pair's midpoint."""
    import numpy as np

    half = (d / 2).cpu().numpy()
    return np.concatenate([half, -half]), np.concatenate([np.ones(len(half)), np.zeros(len(half))])


def logistic_aggregator(sklearn_kwargs: dict[str, Any] | None = None) -> Aggregator:
    """Coefficients of `LogisticRegression(fit_intercept=False, **sklearn_kwargs)` on rows +-D/2 (float32).

    With kwargs among C, tol and max_iter (the default l2 penalty and lbfgs solver) the fit is scikit-learn's
    own L-BFGS-B call made directly (`lbfgs_logistic`: same coefficients, no scikit-learn import); any other
    setting goes to scikit-learn.
    """
    kwargs = dict(sklearn_kwargs or {})

    def aggregate(pos: Tensor, neg: Tensor) -> Tensor:
        d = _deltas(pos, neg)
        if kwargs.keys() <= LBFGS_DEFAULTS.keys():
            settings = {**LBFGS_DEFAULTS, **kwargs}
            half = (d / 2).float()  # (n, d): the float32 rows scikit-learn would fit
            y = torch.cat([torch.ones(len(half)), torch.zeros(len(half))])
            coef = lbfgs_logistic(torch.cat([half, -half]), y, c=float(settings["C"]), tol=float(settings["tol"]),
                                  max_iter=int(settings["max_iter"]))
            return _out(coef, pos)
        from sklearn.linear_model import LogisticRegression

        x, y_np = _sklearn_rows(d)
        reg = LogisticRegression(fit_intercept=False, **kwargs).fit(x.astype("float32"), y_np)
        return _out(torch.as_tensor(reg.coef_[0], dtype=torch.float64), pos)

    return aggregate


def logistic_l1_aggregator(c: float = 1.0, sklearn_kwargs: dict[str, Any] | None = None) -> Aggregator:
    """Logistic with an L1 penalty of strength 1/c (liblinear): sparse coefficients, explicit denoising.

    Needs scikit-learn >= 1.8 (`l1_ratio` selects the penalty). A penalty that zeroes every coefficient
    gives a zero vector: raise `c`.
    """
    kwargs = {"C": c, "l1_ratio": 1.0, "solver": "liblinear", **(sklearn_kwargs or {})}
    return logistic_aggregator(kwargs)


def linear_aggregator() -> Aggregator:
    """Least squares without intercept on rows +-D/2 with targets +-1 (minimum-norm solution)."""

    def aggregate(pos: Tensor, neg: Tensor) -> Tensor:
        d = _deltas(pos, neg)
        x = torch.cat([d / 2, -d / 2])  # (2n, d)
        y = torch.cat([torch.ones(len(d)), -torch.ones(len(d))]).to(x)  # (2n,)
        return _out(torch.linalg.pinv(x) @ y, pos)

    return aggregate


def pca_diff_aggregator() -> Aggregator:
    """repeng "pca_diff": first principal component of the (centred) D, majority-vote orientation."""

    def aggregate(pos: Tensor, neg: Tensor) -> Tensor:
        d = _deltas(pos, neg)
        v = _top_right_singular(d - d.mean(dim=0, keepdim=True))
        return _out(_majority_sign(d, v), pos)

    return aggregate


def pca_center_aggregator() -> Aggregator:
    """repeng "pca_center": first principal component of pos and neg each centred on their pair's midpoint."""

    def aggregate(pos: Tensor, neg: Tensor) -> Tensor:
        d = _deltas(pos, neg)
        v = _top_right_singular(torch.cat([d / 2, -d / 2]))  # rows already have mean zero
        return _out(_majority_sign(d, v), pos)

    return aggregate


AGGREGATORS: dict[str, Callable[[], Aggregator]] = {
    "mean": mean_aggregator,
    "pca": pca_aggregator,
    "logistic": logistic_aggregator,
    "logistic_l1": logistic_l1_aggregator,
    "linear": linear_aggregator,
    "pca_diff": pca_diff_aggregator,
    "pca_center": pca_center_aggregator,
}


def pair_store(labels: LabelSets) -> PooledStore:
    """A `PooledStore` that keeps every document taking part in a pair (uncapped: pairs are materialised)."""
    docs = {p.positive for p in labels.pairs} | {n for p in labels.pairs for n in p.negatives}
    return PooledStore(dict.fromkeys(docs, (0,)))


def paired_samples(labels: LabelSets, store: PooledStore, concept: int) -> tuple[Tensor, Tensor]:
    """(pos, neg), (n_pairs, d) float32: a pair's positive and the mean of its negatives' pooled vectors."""
    pairs = labels.pairs_of(concept)
    if not pairs:
        raise SolverInputError(
            f"concept {labels.concepts[concept]!r} has no paired samples: aggregators need positives with a "
            f"scenario baseline (story layout) or label-field negatives"
        )
    pos = torch.stack([store.vector(p.positive) for p in pairs])
    neg = torch.stack([torch.stack([store.vector(n) for n in p.negatives]).mean(dim=0) for p in pairs])
    return pos, neg
