"""Label sets of the story layout and of a label field: roles, negatives, pairs, splits and bad input."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from actcache.solvers import LabelSpec, SolverInputError, field_labels, story_labels
from actcache.solvers.job_inputs import build_labels, check_pairs


@dataclass(frozen=True)
class D:
    key: str
    meta: dict


def _story(concept: str | None, scenario: str | None = None, **extra) -> dict:
    meta = {"role": "positive" if concept else "baseline", **extra}
    if concept:
        meta["concept"] = concept
    if scenario:
        meta["scenario"] = scenario
    return meta


def test_story_roles_negatives_and_pairs(corpus):
    labels = story_labels(corpus.docs)
    assert labels.concepts == ("anger", "calm", "fear", "joy")
    n = len(corpus.docs)
    for k, c in enumerate(labels.concepts):
        pos = labels.positives(k)
        assert [corpus.docs[i].meta.get("concept") for i in pos] == [c] * len(pos) and len(pos) == 3 + 5
        neg = labels.negatives(k)
        assert set(pos) | set(neg) == set(range(n)) and not set(pos) & set(neg)
        pairs = labels.pairs_of(k)
        assert len(pairs) == 5  # one framing per scenario; stories have no scenario
        for p in pairs:
            (b,) = p.negatives
            assert corpus.docs[b].meta == {
                "scenario": corpus.docs[p.positive].meta["scenario"],
                "role": "baseline",
                "source": "paired",
            }
    assert sum(labels.baseline) == 5
    assert all(labels.concepts_of[i] == () for i in range(n) if labels.baseline[i])
    assert labels.to_dict()["n_pairs"] == 20


def test_pair_uses_every_baseline_of_its_scenario():
    docs = [D("a", _story("x", "s")), D("b1", _story(None, "s")), D("b2", _story(None, "s")), D("c", _story("y"))]
    (pair,) = story_labels(docs).pairs_of(0)
    assert pair.positive == 0 and pair.negatives == (1, 2)


def test_min_positives_skips_but_keeps_as_negatives():
    docs = [D("a1", _story("a")), D("a2", _story("a")), D("b1", _story("b")), D("base", _story(None))]
    labels = story_labels(docs, min_positives=2)
    assert labels.concepts == ("a",) and labels.skipped == {"b": 1}
    assert labels.negatives(0) == [2, 3]


def test_split_field_selects_fit_and_test():
    docs = [D(f"d{i}", _story("ab"[i % 2], split="test" if i >= 4 else "train")) for i in range(6)]
    labels = story_labels(docs, split_field="split")
    assert labels.positives(0) == [0, 2] and labels.positives(0, "test") == [4]
    assert labels.negatives(1, "test") == [4]


def test_split_field_with_unknown_values():
    docs = [D("a", _story("a", split="train")), D("b", _story("b", split="dev"))]
    with pytest.raises(SolverInputError, match=r"split field 'split' has values \['dev'\]"):
        story_labels(docs, split_field="split")


def test_no_labels_at_all():
    with pytest.raises(SolverInputError, match="no document is a positive of any concept"):
        story_labels([D("a", {"text_source": "x"}), D("b", _story(None))])


def test_requested_concept_without_positives():
    docs = [D("a", _story("a")), D("b", _story("b"))]
    with pytest.raises(SolverInputError, match=r"concept\(s\) \['zzz'\] have no positive documents"):
        story_labels(docs, concepts=["a", "zzz"])


def test_concept_whose_positives_are_all_held_out():
    docs = [D("a", _story("a", split="test")), D("b", _story("b", split="train"))]
    with pytest.raises(SolverInputError, match=r"\['a'\] have no positive documents in the fitted split"):
        story_labels(docs, split_field="split")


def test_positive_without_concept_and_bad_role():
    with pytest.raises(SolverInputError, match="document a has role positive but no concept"):
        story_labels([D("a", {"role": "positive"})])
    with pytest.raises(SolverInputError, match="document a has role 'neutral'"):
        story_labels([D("a", {"role": "neutral"})])


def test_single_concept_without_negatives():
    with pytest.raises(SolverInputError, match="concept 'a' has no negatives"):
        story_labels([D("a1", _story("a")), D("a2", _story("a"))])


def test_field_labels_one_concept_other_values_negative():
    values = ["positive", "negative", "neutral", "positive", None, "negative"]
    docs = [D(f"d{i}", {} if v is None else {"sentiment": v}) for i, v in enumerate(values)]
    labels = field_labels(docs, label_field="sentiment", positive="positive")
    assert labels.concepts == ("positive",)
    assert labels.positives(0) == [0, 3] and labels.negatives(0) == [1, 2, 5]
    assert not labels.fit[4]
    assert labels.pairs == () and labels.pairing is None  # no pairs unless a pair field names them


def test_field_labels_errors():
    docs = [D("a", {"sentiment": "negative"}), D("b", {"sentiment": "neutral"})]
    with pytest.raises(SolverInputError, match="no document has the label field 'mood'"):
        field_labels(docs, label_field="mood", positive="x")
    with pytest.raises(SolverInputError, match=r"\['positive'\] have no positive documents"):
        field_labels(docs, label_field="sentiment", positive="positive")
    with pytest.raises(SolverInputError, match="every fitted document has sentiment='negative'"):
        field_labels(docs[:1], label_field="sentiment", positive="negative")


def _pair_docs() -> list[D]:
    """Pairs p1..p3 listed out of corpus order (as a cache's commit order would), an unpaired document, and
    p2 with two negatives."""
    rows = [
        ("n3", "negative", "p3", 6), ("p1", "positive", "p1", 1), ("n2a", "negative", "p2", 4),
        ("u", "positive", None, 7), ("p3", "positive", "p3", 5), ("n1", "negative", "p1", 2),
        ("p2", "positive", "p2", 3), ("n2b", "negative", "p2", 8),
    ]
    docs = []
    for key, sentiment, pair, line in rows:
        meta = {"sentiment": sentiment, "source": "c.jsonl", "index": line}
        if pair is not None:
            meta["pair"] = pair
        docs.append(D(key, meta))
    return docs


def test_pair_field_pairs_documents_sharing_a_value_in_corpus_order():
    docs = _pair_docs()
    labels = field_labels(docs, label_field="sentiment", positive="positive", pair_field="pair")
    named = [(docs[p.positive].key, tuple(docs[n].key for n in p.negatives)) for p in labels.pairs]
    assert named == [("p1", ("n1",)), ("p2", ("n2a", "n2b")), ("p3", ("n3",))]
    assert labels.pairing == "pair field 'pair'"
    assert labels.fit[3] and labels.concepts_of[3] == (0,)  # unpaired, still a positive for caa and the rest
    # the same documents in any other storage order give the same pairs
    shuffled = [docs[i] for i in (7, 2, 5, 0, 3, 6, 1, 4)]
    again = field_labels(shuffled, label_field="sentiment", positive="positive", pair_field="pair")
    assert [(shuffled[p.positive].key, tuple(shuffled[n].key for n in p.negatives)) for p in again.pairs] == named


@pytest.mark.parametrize(("drop", "message"), [
    ("p2", r"pair pair='p2' has 0 positive\(s\) and 2 negative\(s\)"),
    ("n1", r"pair pair='p1' has 1 positive\(s\) and 0 negative\(s\)"),
])
def test_pair_field_needs_one_positive_and_a_negative_per_value(drop, message):
    docs = [d for d in _pair_docs() if d.key != drop]
    with pytest.raises(SolverInputError, match=message):
        field_labels(docs, label_field="sentiment", positive="positive", pair_field="pair")
    two = _pair_docs() + [D("p1b", {"sentiment": "positive", "pair": "p1"})]
    with pytest.raises(SolverInputError, match=r"pair pair='p1' has 2 positive\(s\)"):
        field_labels(two, label_field="sentiment", positive="positive", pair_field="pair")


def test_aggregators_refuse_label_field_mode_without_pair_field():
    docs = _pair_docs()
    labels = build_labels(docs, LabelSpec(label_field="sentiment", positive="positive"))
    with pytest.raises(SolverInputError, match=r"aggregator\(s\) \['pca', 'logistic'\].*--pair-field"):
        check_pairs(labels, ["caa", "pca", "logistic", "subspace"])
    check_pairs(labels, ["caa", "subspace", "heads", "ridge", "quality"])  # the rest need no pairs
    paired = build_labels(docs, LabelSpec(label_field="sentiment", positive="positive", pair_field="pair"))
    check_pairs(paired, ["pca", "logistic", "mean", "linear", "logistic_l1", "pca_diff", "pca_center"])
    with pytest.raises(SolverInputError, match="--pair-field applies with --label-field"):
        build_labels(docs, LabelSpec(pair_field="pair"))


def test_story_pairs_follow_corpus_order_not_storage_order():
    metas = [
        _story("b", "s2", source="paired/s2/b.txt", index=0), _story(None, "s1", source="paired/s1/baseline.txt",
                                                                        index=0),
        _story("a", "s1", source="paired/s1/a.txt", index=0), _story(None, "s2", source="paired/s2/baseline.txt",
                                                                        index=0),
        _story("a", "s2", source="paired/s2/a.txt", index=0), _story(None, "s1", source="paired/s1/baseline.txt",
                                                                        index=1),
    ]
    docs = [D(f"k{i}", m) for i, m in enumerate(metas)]
    expected = None
    for order in ((0, 1, 2, 3, 4, 5), (5, 3, 1, 4, 0, 2), (2, 4, 0, 5, 1, 3)):
        stored = [docs[i] for i in order]
        labels = story_labels(stored)
        named = [(labels.concepts[p.concept], stored[p.positive].key, tuple(stored[n].key for n in p.negatives))
                 for p in labels.pairs]
        assert expected is None or named == expected
        expected = named
    assert expected == [("a", "k2", ("k1", "k5")), ("a", "k4", ("k3",)), ("b", "k0", ("k3",))]


def test_a_text_labelled_twice_counts_for_each_label():
    """One text met twice in a corpus (meta values become per-occurrence lists): positive for each concept."""
    docs = [D("both", {"topic": ["cooking", "sports"]}), D("c", {"topic": "cooking"}), D("o", {"topic": "other"})]
    for positive in ("cooking", "sports"):
        labels = field_labels(docs, label_field="topic", positive=positive)
        assert labels.concepts_of[0] == (0,) and labels.concepts_of[2] == ()
    twice = [D("t", {"role": ["positive", "positive"], "concept": ["a", "b"], "source": "x", "index": [1, 9]}),
             D("a", _story("a")), D("b", _story("b")), D("base", _story(None))]
    labels = story_labels(twice, concepts=["a"])
    assert labels.positives(0) == [0, 1]
    assert story_labels(twice, concepts=["b"]).positives(0) == [0, 2]
    both = story_labels(twice)  # a positive of a and of b, a negative of neither
    assert both.concepts == ("a", "b") and both.concepts_of[0] == (0, 1)
    assert both.positives(0) == [0, 1] and both.positives(1) == [0, 2]
    assert both.negatives(0) == [2, 3] and both.negatives(1) == [1, 3]
    assert both.membership([0, 3, 1]).tolist() == [[True, True], [False, False], [True, False]]
    always = [D("t", {"role": ["positive", "positive"], "concept": ["a", "b"]}), D("a", _story("a"))]
    with pytest.raises(SolverInputError, match="concept 'a' has no negatives"):
        story_labels(always)  # every fitted document is a positive of a (b has a negative: document a)


def test_label_errors_list_what_is_there():
    docs = [D(f"d{i}", {"topic": t, "split": s}) for i, (t, s) in
            enumerate([("cooking", "train"), ("sports", "train"), ("cooking", "dev"), ("sports", "test")])]
    present = r"'topc'; fields present: split: train \(2\), dev \(1\), test \(1\); topic: cooking \(2\), sports \(2\)"
    with pytest.raises(SolverInputError, match=present + "; pass one of them with --label-field"):
        field_labels(docs, label_field="topc", positive="cooking")
    with pytest.raises(SolverInputError, match=r"\['Cooking'\] have no positive .*'topic' with fitted positives: "
                                               r"cooking \(2\), sports \(2\)"):
        field_labels(docs, label_field="topic", positive="Cooking")
    with pytest.raises(SolverInputError, match=r"values \['dev'\] besides 'train'/'test' \(values present: train "
                                               r"\(2\), dev \(1\), test \(1\)\).*--train-value and --test-value"):
        field_labels(docs, label_field="topic", positive="cooking", split_field="split")
    labels = field_labels(docs[:3], label_field="topic", positive="cooking", split_field="split",
                          train_value="train", test_value="dev")
    assert labels.fit == (True, True, False) and labels.test == (False, False, True)
    with pytest.raises(SolverInputError, match=r"--label-field FIELD --positive VALUE \(fields present: split"):
        story_labels(docs)
