"""CAA, subspace, per-head ranking, ridge and quality against straightforward references.

The references materialise every pooled sample and loop over concepts as the reference trainer did, in
numpy float64; the solvers under test run from one streaming pass of accumulators.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from actcache.solvers import (
    LayerPass,
    PassPlan,
    caa_directions,
    concept_quality,
    head_write_projection,
    nearest_concepts,
    neuron_alignment,
    parse_pooling,
    rank_heads_from_totals,
    ridge_reconstruction,
    story_labels,
    story_statistics,
    subspace_direction,
    top_write_heads,
    trajectory_basis,
    triage,
)
from job_fixtures import SAME

POOLING = "mean"


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(np.linalg.norm(v), 1e-6)


def _cos(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _pass(corpus, hook: str, plan: PassPlan):
    labels = story_labels(corpus.docs)
    width = (corpus.resid if hook == "resid_post" else corpus.attn)[0].shape[1]
    lp = LayerPass(labels, width, plan)
    for i, (_doc, h) in enumerate(corpus.stream(hook)):
        lp.feed(i, h)
    return labels, lp.finish()


def _ref_pooled(arrays) -> np.ndarray:
    return np.stack([a.astype(np.float64).mean(0) for a in arrays])  # (n, width): mean pooling


def _ref_caa(x: np.ndarray, members: np.ndarray, c: int) -> np.ndarray:
    return x[members[:, c]].mean(0) - x[~members[:, c]].mean(0)


def _ref_basis(h: np.ndarray) -> np.ndarray:
    if len(h) < 2:
        return _unit(h[-1].astype(np.float64))[:, None]
    x = h.astype(np.float64)
    _, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    keep = (s > 1e-6 * s[0]) & (np.arange(len(s)) < len(h) - 1)
    return vt[keep].T.astype(np.float64) if keep.any() else _unit(h[-1].astype(np.float64))[:, None]


def _ref_subspace(corpus, members: np.ndarray, c: int, caa_diff: np.ndarray):
    projs = [b @ b.T for b in (_ref_basis(h) for h in corpus.resid)]
    m_pos = np.mean([p for p, m in zip(projs, members, strict=True) if m[c]], axis=0)
    m_base = np.mean([p for p, m in zip(projs, members, strict=True) if not m[c]], axis=0)
    evals, evecs = np.linalg.eigh(m_pos - m_base)
    evals, evecs = evals[::-1], evecs[:, ::-1]
    out = np.zeros(len(caa_diff))
    for j in range(5):
        e = evecs[:, j] if evecs[:, j] @ caa_diff >= 0 else -evecs[:, j]
        out += max(evals[j], 0.0) * e
    return _unit(out if out @ caa_diff >= 0 else -out), evals[:20]


@pytest.fixture(scope="module")
def resid(corpus):
    plan = PassPlan((parse_pooling(POOLING),), subspace_concepts=tuple(range(4)), quality_cap=1000)
    labels, stats = _pass(corpus, "resid_post", plan)
    return labels, stats, _ref_pooled(corpus.resid), labels.membership()


def test_caa_matches_reference_and_finds_planted_direction(corpus, resid):
    _, stats, x, members = resid
    vectors = caa_directions(stats.moments[POOLING])
    for c in range(4):
        assert _cos(vectors[c], _ref_caa(x, members, c)) >= SAME
        # the negatives hold the other concepts: v_c leans away from them, so only roughly on u_c
        assert int(np.argmax(corpus.directions @ vectors[c].double().numpy())) == c
        assert _cos(vectors[c], corpus.directions[c]) > 0.6
    np.testing.assert_allclose(vectors.norm(dim=1).numpy(), 1.0, atol=1e-6)


def test_subspace_matches_reference_with_deviations(corpus, resid):
    _, stats, x, members = resid
    proj = stats.projectors
    for c in range(4):
        diff = stats.moments[POOLING].diff(c)
        got = subspace_direction(*proj.total(), *proj.concept_total(c), diff)
        ref, ref_evals = _ref_subspace(corpus, members, c, _ref_caa(x, members, c))
        assert _cos(got.vector, ref) >= SAME
        np.testing.assert_allclose(got.eigenvalues, ref_evals, atol=1e-5)
        assert got.eigenvalues == sorted(got.eigenvalues, reverse=True) and len(got.eigenvalues) == 20
        assert float(got.vector.double() @ diff) > 0  # Deviation 2: oriented with the CAA difference
        assert int(np.argmax(corpus.directions @ got.vector.double().numpy())) == c


def test_trajectory_basis_drops_the_centring_null_vector():
    h = 1000.0 + torch.randn(5, 8)  # a large offset, as real activations have
    basis = trajectory_basis(h)  # rank of the centred 5x8 matrix is 4: Deviation 1 drops the 5th vector
    assert basis.shape == (8, 4)
    torch.testing.assert_close(basis.T @ basis, torch.eye(4), atol=1e-5, rtol=0)
    assert trajectory_basis(h, k=2).shape == (8, 2)
    # Deviation 1b (b): at most n_tok - 1 vectors even without the relative threshold
    assert trajectory_basis(h, rel_tol=0.0).shape == (8, 4)


def test_trajectory_basis_centres_in_float64():
    """Deviation 1b. Three distinct tokens, each twice, under an offset of 1e4: the centred trajectory has
    rank 2. A float32 mean is off by ~eps x 1e4, which adds that error to every centred row: a third singular
    value at ~6e-4 x the top, far above the 1e-6 threshold and below the n_tok - 1 cap, so float32 centring
    keeps an arbitrary third vector. Centring in float64 keeps exactly the two true directions."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, 8, generator=g, dtype=torch.float64)
    h = (1e4 + 10 * torch.randn(8, generator=g, dtype=torch.float64) + tokens[[0, 1, 2, 0, 1, 2]]).float()
    float32_centred = torch.linalg.svdvals(h - h.mean(0))
    assert float32_centred[2] > 1e-4 * float32_centred[0]  # the premise: float32 centring leaves a third value
    basis = trajectory_basis(h).double()
    assert basis.shape == (8, 2)
    exact = torch.linalg.qr((h[1:3].double() - h[0].double()).T).Q  # (8, 2) the span of the stored tokens
    torch.testing.assert_close(basis @ basis.T, exact @ exact.T, atol=1e-5, rtol=0)


@pytest.mark.parametrize("n_tok", [2, 5, 8, 9, 30])
def test_trajectory_basis_spans_the_reference_subspace(n_tok):
    h = (50.0 + np.random.default_rng(n_tok).standard_normal((n_tok, 8))).astype(np.float32)
    got, ref = trajectory_basis(torch.from_numpy(h)).double().numpy(), _ref_basis(h)
    assert got.shape == ref.shape == (8, min(n_tok - 1, 8))
    np.testing.assert_allclose(got @ got.T, ref @ ref.T, atol=1e-4)


def test_trajectory_basis_fallbacks():
    one = torch.tensor([[3.0, 4.0]])
    torch.testing.assert_close(trajectory_basis(one), torch.tensor([[0.6], [0.8]]))
    constant = torch.tensor([[3.0, 4.0]] * 4)  # centred to zero: no direction survives
    torch.testing.assert_close(trajectory_basis(constant), torch.tensor([[0.6], [0.8]]))


@pytest.mark.parametrize(
    ("diff", "expected"), [((1, 1, 1), (0.5, 0.3, 0)), ((1, -1, 1), (0.5, -0.3, 0)), ((-1, 1, 5), (-0.5, 0.3, 0))]
)
def test_subspace_orients_each_eigenvector_with_the_caa_difference(diff, expected):
    # M_pos - M_base = T_c / 1 - (T - T_c) / 1 = diag(0.5, 0.3, -0.2): eigenvectors are the axes, whatever
    # sign eigh returns; Deviation 2 makes each one agree with the CAA difference before the weighted sum
    gap = torch.diag(torch.tensor([0.5, 0.3, -0.2], dtype=torch.float64))
    eye = torch.eye(3, dtype=torch.float64)
    got = subspace_direction(2 * eye - gap, 2, eye, 1, torch.tensor(diff, dtype=torch.float64))
    torch.testing.assert_close(got.vector, torch.nn.functional.normalize(torch.tensor(expected), dim=0))
    np.testing.assert_allclose(got.eigenvalues, [0.5, 0.3, -0.2], atol=1e-12)


def test_subspace_needs_positives_and_negatives():
    with pytest.raises(ValueError, match="needs positives and negatives"):
        subspace_direction(torch.eye(2), 3, torch.eye(2), 3, torch.ones(2))


def _ref_heads(z: np.ndarray, members: np.ndarray, c: int, n_heads: int):
    z = z.reshape(len(z), n_heads, -1)
    pos, neg = z[members[:, c]], z[~members[:, c]]
    raw = np.linalg.norm(pos.mean(0) - neg.mean(0), axis=1)
    sel = raw / np.maximum(np.linalg.norm(neg.std(0, ddof=1), axis=1), 1e-6)
    top = np.argsort(-sel, kind="stable")[:10]
    return top, raw, sel, raw[top].sum() / raw.sum(), pos.mean(0) - neg.mean(0)


def test_heads_match_reference_and_find_planted_head(corpus):
    plan = PassPlan((parse_pooling(POOLING),), squares=True)
    labels, stats = _pass(corpus, "attn_z", plan)
    z, members = _ref_pooled(corpus.attn), labels.membership()
    for c, name in enumerate(labels.concepts):
        got = rank_heads_from_totals(stats.moments[POOLING], c, corpus.n_heads)
        top, raw, sel, conc, diff = _ref_heads(z, members, c, corpus.n_heads)
        assert [h for h, _, _ in got.top] == top.tolist()
        assert got.top[0][0] == corpus.planted_head[name]
        np.testing.assert_allclose([r for _, r, _ in got.top], raw[top], atol=1e-4)
        np.testing.assert_allclose([s for _, _, s in got.top], sel[top], atol=1e-4)
        assert got.head_concentration == pytest.approx(conc, abs=1e-4)
        direction = _unit(np.random.default_rng(c).standard_normal(corpus.w_o.shape[0]))
        proj = head_write_projection(
            stats.moments[POOLING].diff(c), torch.from_numpy(corpus.w_o), torch.from_numpy(direction), corpus.n_heads
        )
        hd = corpus.head_dim
        ref = [
            direction @ (corpus.w_o[:, h * hd : (h + 1) * hd].astype(np.float64) @ diff[h])
            for h in range(corpus.n_heads)
        ]
        np.testing.assert_allclose(proj.numpy(), ref, atol=1e-4)
        writes = top_write_heads(proj, top_k=3)
        assert [h for h, _ in writes] == np.argsort(-np.abs(ref), kind="stable")[:3].tolist()


def test_heads_reject_width_not_multiple_of_heads():
    from actcache.solvers import rank_heads

    with pytest.raises(ValueError, match="not a multiple of n_heads=5"):
        rank_heads(torch.ones(12), torch.ones(12), 5)


def test_ridge_matches_reference():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((4, 16))
    v = np.concatenate([base, [0.6 * base[0] - 0.8 * base[2] + 0.05 * rng.standard_normal(16)]])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    names = ["a", "b", "c", "d", "mix"]
    got = ridge_reconstruction(torch.from_numpy(v).float(), names)
    for t in range(5):
        o = np.delete(v, t, axis=0)
        a = np.linalg.solve(o @ o.T + 0.01 * np.eye(4), o @ v[t])
        resid = v[t] - o.T @ a
        assert got[t].r2 == pytest.approx(1 - resid @ resid / (v[t] @ v[t]), abs=1e-4)
        assert got[t].residual_norm == pytest.approx(np.linalg.norm(resid), abs=1e-4)
        order = np.argsort(-np.abs(a), kind="stable")
        others = [n for k, n in enumerate(names) if k != t]
        assert [n for n, _ in got[t].top] == [others[k] for k in order]
        np.testing.assert_allclose([w for _, w in got[t].top], a[order], atol=1e-4)
    assert got[4].r2 > 0.9 and {n for n, _ in got[4].top[:2]} == {"a", "c"}


def _ref_story_stats(x: np.ndarray, v: np.ndarray, keys: list[str]) -> dict:
    centred = x - x.mean(0)
    s2 = np.linalg.svd(centred, compute_uv=False) ** 2
    proj = x @ v
    align = centred @ v / np.linalg.norm(centred, axis=1)
    low = np.argsort(align, kind="stable")[:2]
    return {
        "first_pc_variance_ratio": s2[0] / s2.sum(),
        "top3_variance_ratios": (s2[:3] / s2.sum()).tolist(),
        "story_projection_mean": proj.mean(),
        "story_projection_std": proj.std(),
        "story_projection_min": proj.min(),
        "story_projection_max": proj.max(),
        "story_alignment_mean": align.mean(),
        "story_alignment_std": align.std(),
        "outlier_stories": [[keys[i], align[i]] for i in low],
    }


def test_quality_fields_match_reference(corpus, resid):
    labels, stats, x, members = resid
    vectors = caa_directions(stats.moments[POOLING])
    for c in range(4):
        docs, pooled = stats.positives[POOLING].vectors(c)
        keys = [labels.keys[i] for i in docs]
        got = story_statistics(pooled, keys, vectors[c])
        ref = _ref_story_stats(x[members[:, c]], vectors[c].double().numpy(), keys)
        for field, value in ref.items():
            if field == "outlier_stories":
                assert [k for k, _ in got[field]] == [k for k, _ in value]
                np.testing.assert_allclose([a for _, a in got[field]], [a for _, a in value], atol=1e-4)
            else:
                np.testing.assert_allclose(got[field], value, atol=1e-4, err_msg=field)


def test_quality_small_samples():
    one = story_statistics(torch.ones(1, 3), ["k"], torch.tensor([1.0, 0, 0]))
    assert one["first_pc_variance_ratio"] == 1.0 and one["top3_variance_ratios"] == [1.0]
    assert one["story_alignment_mean"] is None and one["outlier_stories"] == []
    assert one["story_projection_min"] == one["story_projection_max"] == 1.0


def test_neuron_alignment_against_reference(corpus):
    rng = np.random.default_rng(5)
    w_down = rng.standard_normal((24, 64))
    w_down[:, 17] = -3.0 * corpus.directions[1] + 0.1 * rng.standard_normal(24)
    v = torch.from_numpy(corpus.directions[1]).float()
    got = neuron_alignment(v, torch.from_numpy(w_down).float())
    cos = (w_down / np.linalg.norm(w_down, axis=0)).T @ _unit(corpus.directions[1])
    order = np.argsort(-np.abs(cos), kind="stable")[:5]
    assert got["best_neuron_idx"] == 17 and got["best_neuron_cosine"] == pytest.approx(cos[17], abs=1e-4)
    assert got["best_neuron_cosine"] < -0.9
    assert [i for i, _ in got["top5_neurons"]] == order.tolist()
    np.testing.assert_allclose([c for _, c in got["top5_neurons"]], cos[order], atol=1e-4)
    moe = neuron_alignment(v, None, "layer 3 is a MoE layer: no dense W_down")
    assert moe["best_neuron_idx"] is None and moe["neuron_reason"] == "layer 3 is a MoE layer: no dense W_down"


def test_nearest_concepts_and_triage():
    v = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0, 1]])
    near = nearest_concepts(v, ["a", "b", "c", "d"], 0, top_k=5)
    assert [n for n, _ in near] == ["b", "c", "d"] and near[0][1] == pytest.approx(0.9 / np.hypot(0.9, 0.1))
    clean = {"first_pc_variance_ratio": 0.8, "best_neuron_cosine": -0.7, "ridge_r2": 0.2}
    far = [["x", 0.3]]
    assert triage(clean, far) == "clean single-neuron"
    assert triage({**clean, "best_neuron_cosine": None}, far) == "clean low-dim circuit"
    assert triage({**clean, "ridge_r2": 0.95}, far) == "redundant"
    assert triage(clean, [["x", 0.85]]) == "contaminated"
    assert triage({**clean, "first_pc_variance_ratio": 0.3}, far) == "fragmented"
    assert triage({**clean, "first_pc_variance_ratio": 0.5}, far) == "mixed"


def test_concept_quality_uses_middle_layer():
    per_layer = {
        layer: {"first_pc_variance_ratio": 0.05 * layer, "outlier_stories": [[f"s{layer}", 0.0]]} for layer in (2, 9, 5)
    }
    entry = concept_quality(per_layer, [["x", 0.1]], 7)
    assert entry["middle_layer"] == 5 and entry["triage"] == "fragmented"
    assert entry["outlier_stories"] == [["s5", 0.0]] and list(entry["layers"]) == ["2", "5", "9"]
