"""Streaming totals equal the direct computation on materialised samples; merging and export keep them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from actcache.solvers import (
    LayerPass,
    MomentTotals,
    PassPlan,
    PooledStore,
    ProjectorTotals,
    SolverInputError,
    parse_pooling,
    story_labels,
    subspace_batches,
    trajectory_basis,
)

# doc index -> further concepts of the same text (a story of anger also about fear, ...)
EXTRA_CONCEPTS = {0: ("fear",), 4: ("joy", "anger"), 13: ("joy",)}  # 13: calm framing of scenario s0


def _labelled_twice(docs: list) -> list:
    """The documents with those of EXTRA_CONCEPTS also positives of further concepts (list-valued metadata, as a
    build gives a text met several times in one corpus)."""
    out = list(docs)
    for i, more in EXTRA_CONCEPTS.items():
        meta = docs[i].meta
        concepts = [meta["concept"], *more]
        out[i] = replace(docs[i], meta={**meta, "concept": concepts, "role": ["positive"] * len(concepts)})
    return out


@pytest.fixture(params=["one concept each", "some in several concepts"])
def docs(request, corpus) -> list:
    """The corpus's documents as labelled, and with some texts positives of two or three concepts."""
    return corpus.docs if request.param == "one concept each" else _labelled_twice(corpus.docs)


def _pooled_mean(corpus, docs) -> tuple[np.ndarray, np.ndarray]:
    """(pooled means (n, d) float64, membership (n, C) bool written out from the metadata, not from the labels)."""
    x = np.stack([h.astype(np.float64).mean(0) for h in corpus.resid])  # (n, d)
    concepts = corpus.concepts
    members = np.zeros((len(docs), len(concepts)), dtype=bool)
    for i, d in enumerate(docs):
        named = d.meta.get("concept")
        for c in named if isinstance(named, list) else [named] if named else []:
            members[i, concepts.index(c)] = True
    assert (members == story_labels(docs).membership()).all()
    return x, members


def test_moment_totals_match_direct(corpus, docs):
    x, members = _pooled_mean(corpus, docs)
    totals = MomentTotals(4, x.shape[1], squares=True)
    for row, m in zip(x, members, strict=True):
        totals.add(torch.from_numpy(row).float(), np.flatnonzero(m).tolist())
    for c in range(4):
        pos, neg = x[members[:, c]], x[~members[:, c]]
        mean_pos, mean_neg = totals.means(c)
        np.testing.assert_allclose(mean_pos.numpy(), pos.mean(0), rtol=0, atol=1e-5)
        np.testing.assert_allclose(mean_neg.numpy(), neg.mean(0), rtol=0, atol=1e-5)
        np.testing.assert_allclose(totals.negative_std(c).numpy(), neg.std(0, ddof=1), rtol=1e-4, atol=1e-6)
        assert totals.n_positive(c) == len(pos) and totals.n_negative(c) == len(neg)


def test_shifted_sums_keep_variance_of_large_offsets():
    rng = np.random.default_rng(1)
    x = 1e6 + rng.standard_normal((500, 3))  # variance 1 under an offset of 1e6
    totals = MomentTotals(1, 3, squares=True)
    totals.add_batch(torch.from_numpy(x), torch.zeros(500, 1, dtype=torch.bool))  # negatives of every concept
    np.testing.assert_allclose(totals.negative_std(0).numpy(), x.std(0, ddof=1), rtol=1e-9)


def test_merge_and_state_dict_equal_one_pass(corpus, docs):
    x, members = _pooled_mean(corpus, docs)
    whole, first, second = (MomentTotals(4, x.shape[1], squares=True) for _ in range(3))
    xs, cs = torch.from_numpy(x), torch.from_numpy(members)
    whole.add_batch(xs, cs)
    first.add_batch(xs[:17], cs[:17])
    second.add_batch(xs[17:] * 1.0, cs[17:])
    first.merge(MomentTotals.from_state_dict(second.state_dict()))
    for c in range(4):
        torch.testing.assert_close(first.diff(c), whole.diff(c), rtol=0, atol=1e-10)
        torch.testing.assert_close(first.negative_std(c), whole.negative_std(c), rtol=1e-9, atol=1e-10)


def test_projector_totals_match_direct_and_split_passes(corpus, docs):
    _, members = _pooled_mean(corpus, docs)
    bases = [trajectory_basis(torch.from_numpy(h)) for h in corpus.resid]
    direct = sum(b.double() @ b.double().T for b in bases)  # every document once, whatever its concepts
    direct_c = sum(b.double() @ b.double().T for b, m in zip(bases, members, strict=True) if m[2])
    one_pass = ProjectorTotals(24, concepts=range(4), flush_columns=16)  # flushes every few documents
    unbuffered = ProjectorTotals(24, concepts=range(4), flush_columns=1)
    later = ProjectorTotals(24, concepts=[2], with_total=False)  # a later, per-concept pass
    first_half, second_half = ProjectorTotals(24, concepts=range(4)), ProjectorTotals(24, concepts=range(4))
    for i, (b, m) in enumerate(zip(bases, members, strict=True)):
        for acc in (one_pass, unbuffered, later, first_half if i < 20 else second_half):
            acc.add(b, np.flatnonzero(m).tolist())
    first_half.merge(second_half)
    total, n_total = one_pass.total()
    torch.testing.assert_close(total, direct, rtol=0, atol=1e-5)
    assert n_total == len(bases)
    for acc in (one_pass, unbuffered, later, first_half):
        t_c, n_c = acc.concept_total(2)
        torch.testing.assert_close(t_c, direct_c, rtol=0, atol=1e-5)
        assert n_c == members[:, 2].sum()
    torch.testing.assert_close(first_half.total()[0], direct, rtol=0, atol=1e-5)
    assert not later.wants(()) and later.wants((0, 2)) and not later.wants((1, 3)) and one_pass.wants(())
    with pytest.raises(ValueError, match="with_total=False"):
        later.total()
    with pytest.raises(ValueError, match="concept 1 is not tracked"):
        later.concept_total(1)


def test_subspace_batches_fit_the_budget():
    d = 64
    budget = ProjectorTotals.bytes_needed(d, 4)  # room for T + 3 concept totals
    held = _held_bytes(ProjectorTotals(d, concepts=range(3)))  # T + 3 concept totals, column buffer empty
    assert held <= budget <= held + d * 1024 * 4
    batches = subspace_batches(list(range(10)), d, budget)
    assert batches == [(0, 1, 2), (3, 4, 5, 6), (7, 8, 9)]
    assert all(ProjectorTotals.bytes_needed(d, len(b) + (i == 0)) <= budget for i, b in enumerate(batches))
    assert subspace_batches(list(range(3)), d, 10 * budget) == [(0, 1, 2)]
    with pytest.raises(SolverInputError, match="the subspace method at width 64 needs at least"):
        subspace_batches([0], d, ProjectorTotals.bytes_needed(d, 2) - 1)


def test_pooled_store_reservoir_is_capped_and_deterministic():
    def run(seed: int) -> list[int]:
        store = PooledStore(dict.fromkeys(range(100), (7,)), cap=10, seed=seed)
        for i in range(120):
            store.add(i, torch.full((3,), float(i)))
        docs, vecs = store.vectors(7)
        assert len(docs) == 10 and torch.equal(vecs[:, 0], torch.tensor(docs, dtype=torch.float32))
        assert store.n_seen(7) == 100
        return docs

    assert run(0) == run(0) and run(0) != run(1)
    assert max(run(0)) >= 10  # later documents do get in


def test_pooled_store_keeps_a_document_in_each_of_its_groups():
    """Documents in two groups: each group's reservoir sees them (capped per group), the vector is held once and
    dropped only when no group keeps it."""
    groups = {i: (0, 1) if i % 3 == 0 else (i % 2,) for i in range(60)}
    store = PooledStore(groups, cap=8, seed=3)
    for i in range(60):
        store.add(i, torch.full((2,), float(i)))
    for g in (0, 1):
        docs, vecs = store.vectors(g)
        assert len(docs) == 8 and all(g in groups[i] for i in docs)
        assert torch.equal(vecs[:, 0], torch.tensor(docs, dtype=torch.float32))
        assert store.n_seen(g) == sum(g in gs for gs in groups.values())
    kept = set(store.vectors(0)[0]) | set(store.vectors(1)[0])
    assert _held_bytes(store) == len(kept) * 2 * 4  # one float32 (2,) per kept document, evicted ones freed
    uncapped = PooledStore({5: (0, 2), 6: ()})
    uncapped.add(5, torch.ones(2))
    uncapped.add(6, torch.ones(2))  # in no group: ignored
    assert uncapped.vectors(0)[0] == uncapped.vectors(2)[0] == [5] and _held_bytes(uncapped) == 8


def test_layer_pass_reads_once_for_every_pooling(corpus, docs):
    labels = story_labels(docs)
    _, members = _pooled_mean(corpus, docs)
    poolings = tuple(parse_pooling(p) for p in ("last", "mean", "mean-skip:1", "span:1:4"))
    lp = LayerPass(labels, 24, PassPlan(poolings, quality_cap=100, pairs=True), batch=10)
    for i, (_doc, h) in enumerate(corpus.stream()):
        lp.feed(i, h)
    stats = lp.finish()
    for p in poolings:
        x = np.stack([p(torch.from_numpy(h)).double().numpy() for h in corpus.resid])
        for c in range(4):
            mask = members[:, c]
            ref = x[mask].mean(0) - x[~mask].mean(0)
            np.testing.assert_allclose(stats.moments[str(p)].diff(c).numpy(), ref, rtol=0, atol=1e-5)
            docs, vecs = stats.positives[str(p)].vectors(c)
            assert docs == labels.positives(c)
            np.testing.assert_allclose(vecs.numpy(), x[mask], rtol=0, atol=1e-6)
    assert set(stats.pairs["last"].kept[0]) == {p.positive for p in labels.pairs} | {
        n for p in labels.pairs for n in p.negatives
    }


def _held_bytes(obj: object, seen: set[int] | None = None) -> int:
    """Bytes of every tensor reachable from `obj` (each storage once): what an accumulator really holds."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()
    if isinstance(obj, dict):
        return sum(_held_bytes(v, seen) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_held_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and type(obj).__module__.startswith("actcache"):
        return sum(_held_bytes(v, seen) for v in vars(obj).values())
    return 0


@pytest.mark.parametrize("plan", [
    PassPlan((parse_pooling("last"),), squares=True, subspace_concepts=(0, 1), quality_cap=5),
    PassPlan((parse_pooling("last"), parse_pooling("mean")), quality_cap=1000, pairs=True),
    PassPlan((parse_pooling("mean-skip:1"),), subspace_concepts=(0, 1, 2, 3), subspace_total=False),
])
def test_layer_pass_memory_estimate_bounds_what_it_holds(corpus, plan):
    """Measured, not retyped: the tensors a finished pass holds stay under the estimate, and the estimate is
    tight but for the projector column buffer (d x 1024 float32), which is empty after `finish`."""
    labels = story_labels(corpus.docs)
    lp = LayerPass(labels, 24, plan)
    for i, (_doc, h) in enumerate(corpus.stream()):
        lp.feed(i, h)
    held = _held_bytes(lp.finish())
    buffer = 24 * 1024 * 4 if plan.subspace_concepts else 0
    assert held <= plan.memory_bytes(labels, 24) <= held + buffer


def test_layer_pass_rejects_wrong_width(corpus):
    lp = LayerPass(story_labels(corpus.docs), 23, PassPlan((parse_pooling("last"),)))
    with pytest.raises(ValueError, match="width 24 but the pass expects 23"):
        lp.feed(0, corpus.resid[0])


def test_batched_subspace_passes_equal_one_pass(corpus, docs):
    labels = story_labels(docs)
    one = LayerPass(labels, 24, PassPlan((), subspace_concepts=(0, 1, 2, 3)))
    first = LayerPass(labels, 24, PassPlan((parse_pooling("last"),), subspace_concepts=(0,)))
    later = LayerPass(labels, 24, PassPlan((), subspace_concepts=(2, 3), subspace_total=False))
    for i, (_doc, h) in enumerate(corpus.stream()):
        one.feed(i, h)
        first.feed(i, h)
        if {2, 3} & set(labels.concepts_of[i]):  # a later pass reads only its batch's positives
            later.feed(i, h)
    one_p, first_p, later_p = (lp.finish().projectors for lp in (one, first, later))
    torch.testing.assert_close(first_p.total()[0], one_p.total()[0], rtol=0, atol=1e-10)
    for c, acc in ((0, first_p), (2, later_p), (3, later_p)):
        torch.testing.assert_close(acc.concept_total(c)[0], one_p.concept_total(c)[0], rtol=0, atol=1e-10)


def test_position_share_flags_a_dominant_first_token(corpus):
    from actcache.solvers.run_setup import pooling_warnings

    labels = story_labels(corpus.docs)
    poolings = tuple(parse_pooling(p) for p in ("mean", "mean-skip:1", "last", "span:0:3"))
    lp = LayerPass(labels, 24, PassPlan(poolings))
    shares = []
    for i, (_doc, h) in enumerate(corpus.stream()):
        h = h.copy()
        h[0] *= 50.0  # an attention sink
        norms = np.linalg.norm(h.astype(np.float64), axis=1)
        shares.append(norms[0] / norms.sum())
        lp.feed(i, h)
    stats = lp.finish()
    assert "last" not in stats.position_share  # one token: nothing to dominate
    position, share = stats.position_share["mean"].dominant()
    assert position == 0 and share == pytest.approx(np.mean(shares), abs=1e-6)
    assert stats.position_share["mean-skip:1"].dominant() is None
    notes = pooling_warnings(poolings, {3: stats.position_share, 6: stats.position_share})
    assert len(notes) == 2
    assert notes[0].startswith(f"pooling mean: token position 0 carries up to {np.mean(shares):.0%}")
    assert "layer(s) 3, 6" in notes[0] and notes[0].endswith("use --pooling mean-skip:1")
    assert notes[1].startswith("pooling span:0:3: token position 0") and notes[1].endswith("use --pooling span:1:3")
