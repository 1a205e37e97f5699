"""Aggregators: parity with the installed steering-vectors library, repeng's definitions, pairing."""

from __future__ import annotations

import numpy as np
import pytest
import steering_vectors as sv
import torch
from actcache.solvers import (
    AGGREGATORS,
    LayerPass,
    PassPlan,
    SolverInputError,
    linear_aggregator,
    logistic_aggregator,
    logistic_l1_aggregator,
    mean_aggregator,
    paired_samples,
    parse_pooling,
    pca_aggregator,
    pca_center_aggregator,
    pca_diff_aggregator,
    story_labels,
)
from job_fixtures import SAME
from sklearn.decomposition import PCA


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


@pytest.fixture(scope="module")
def pairs(corpus):
    """(pos, neg) of concept 'fear' from a streaming pass, last-token pooling: 5 framings vs baselines."""
    labels = story_labels(corpus.docs)
    lp = LayerPass(labels, 24, PassPlan((parse_pooling("last"),), pairs=True))
    for i, (_doc, h) in enumerate(corpus.stream()):
        lp.feed(i, h)
    return paired_samples(labels, lp.finish().pairs["last"], labels.concepts.index("fear"))


@pytest.fixture(scope="module")
def many_pairs():
    rng = np.random.default_rng(7)
    direction = rng.standard_normal(16)
    neg = torch.from_numpy(5.0 + rng.standard_normal((40, 16))).float()
    pos = neg + torch.from_numpy(rng.uniform(0.5, 1.5, (40, 1)) * direction + 0.7 * rng.standard_normal((40, 16)))
    return pos.float(), neg


def test_paired_samples_are_framing_and_scenario_baseline(corpus, pairs):
    pos, neg = pairs
    labels = story_labels(corpus.docs)
    expected = [
        (corpus.resid[p.positive][-1], corpus.resid[p.negatives[0]][-1])
        for p in labels.pairs_of(labels.concepts.index("fear"))
    ]
    assert pos.shape == neg.shape == (5, 24)
    np.testing.assert_array_equal(pos.numpy(), np.stack([e[0] for e in expected]))
    np.testing.assert_array_equal(neg.numpy(), np.stack([e[1] for e in expected]))


@pytest.mark.parametrize("which", ["pairs", "many_pairs"])
@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (mean_aggregator, sv.mean_aggregator),
        (pca_aggregator, sv.pca_aggregator),
        (logistic_aggregator, sv.logistic_aggregator),
    ],
)
@pytest.mark.filterwarnings("ignore:Creating a tensor from a list:UserWarning")  # inside the library
def test_parity_with_steering_vectors(request, which, ours, theirs):
    pos, neg = request.getfixturevalue(which)
    got, ref = ours()(pos, neg), theirs()(pos, neg)
    assert _cos(got, ref) >= SAME
    assert float(got.norm()) == pytest.approx(1.0, abs=1e-6)


def test_parity_with_steering_vectors_sklearn_kwargs(many_pairs):
    pos, neg = many_pairs
    kwargs = {"C": 0.05, "max_iter": 500}
    assert _cos(logistic_aggregator(kwargs)(pos, neg), sv.logistic_aggregator(kwargs)(pos, neg)) >= SAME


@pytest.mark.parametrize(("kwargs", "converges"), [({}, True), ({"C": 0.05, "tol": 1e-6}, True),
                                                  ({"max_iter": 4}, False)])
def test_lbfgs_logistic_retraces_scikit_learns_solver(kwargs, converges):
    """The direct L-BFGS-B call follows scikit-learn's own iterates, not just its optimum: stopped after 4
    iterations it lands where scikit-learn stops, and warns as scikit-learn does."""
    import warnings

    from actcache.solvers.logistic_lbfgs import LBFGS_DEFAULTS, lbfgs_logistic
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    x = (rng.standard_normal((30, 200)) + 0.3 * rng.standard_normal(200)).astype(np.float32)  # d > n, as in pairs
    y = (rng.random(30) < 0.5).astype(np.float64)
    settings = {**LBFGS_DEFAULTS, **kwargs}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = lbfgs_logistic(torch.from_numpy(x), torch.from_numpy(y), c=settings["C"], tol=settings["tol"],
                             max_iter=settings["max_iter"])
        ref = LogisticRegression(fit_intercept=False, **kwargs).fit(x, y).coef_[0]
    assert _cos(got, torch.from_numpy(ref)) >= SAME
    assert float(got.norm()) == pytest.approx(float(np.linalg.norm(ref)), rel=1e-5)
    ours = [w for w in caught if issubclass(w.category, RuntimeWarning) and "lbfgs" in str(w.message)]
    theirs = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert len(ours) == len(theirs) == (0 if converges else 1)


def _repeng(pos: torch.Tensor, neg: torch.Tensor, method: str) -> np.ndarray:
    """repeng read_representations on precomputed hiddens, rows ordered [pos, neg, pos, neg, ...]."""
    h = np.stack([pos.numpy(), neg.numpy()], axis=1).reshape(-1, pos.shape[1]).astype(np.float64)
    if method == "pca_diff":
        train = h[::2] - h[1::2]
    else:
        center = (h[::2] + h[1::2]) / 2
        train = h.copy()
        train[::2] -= center
        train[1::2] -= center
    direction = PCA(n_components=1, whiten=False).fit(train).components_[0]
    projected = h @ direction / np.linalg.norm(direction)
    smaller = np.mean([projected[i] < projected[i + 1] for i in range(0, len(h), 2)])
    larger = np.mean([projected[i] > projected[i + 1] for i in range(0, len(h), 2)])
    return -direction if smaller > larger else direction


@pytest.mark.parametrize("which", ["pairs", "many_pairs"])
@pytest.mark.parametrize(("ours", "method"), [(pca_diff_aggregator, "pca_diff"), (pca_center_aggregator, "pca_center")])
def test_repeng_definitions(request, which, ours, method):
    pos, neg = request.getfixturevalue(which)
    assert _cos(ours()(pos, neg), torch.from_numpy(_repeng(pos, neg, method))) >= SAME


def test_linear_is_least_squares_on_midpoint_rows(many_pairs):
    pos, neg = many_pairs
    d = (pos - neg).double().numpy()
    x = np.concatenate([d / 2, -d / 2])
    y = np.concatenate([np.ones(len(d)), -np.ones(len(d))])
    ref = np.linalg.lstsq(x, y, rcond=None)[0]
    assert _cos(linear_aggregator()(pos, neg), torch.from_numpy(ref)) >= SAME


def test_logistic_l1_is_sparse_and_aligned(many_pairs):
    pos, neg = many_pairs
    sparse = logistic_l1_aggregator(c=0.05)(pos, neg)
    dense = logistic_aggregator()(pos, neg)
    assert int((sparse == 0).sum()) > int((dense == 0).sum())
    assert _cos(sparse, dense) > 0.5 and float(sparse.norm()) == pytest.approx(1.0, abs=1e-6)


def test_every_registered_aggregator_is_unit_and_points_along_the_mean(many_pairs):
    pos, neg = many_pairs
    mean = (pos - neg).mean(0)
    for name, factory in AGGREGATORS.items():
        v = factory()(pos, neg)
        assert float(v.norm()) == pytest.approx(1.0, abs=1e-6), name
        assert _cos(v, mean) > 0.3, name


def test_bad_pairs():
    with pytest.raises(SolverInputError, match="paired samples of equal shape"):
        mean_aggregator()(torch.zeros(3, 4), torch.zeros(2, 4))


def test_concept_without_pairs(corpus):
    docs = [d for d in corpus.docs if d.meta["source"] == "stories" or d.meta.get("concept") != "joy"]
    labels = story_labels(docs)
    with pytest.raises(SolverInputError, match="concept 'joy' has no paired samples"):
        paired_samples(labels, None, labels.concepts.index("joy"))
