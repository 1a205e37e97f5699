"""Label sets of the story layout and of a label field: roles, negatives, pairs, splits and bad input."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from actcache.solvers import NEGATIVE_ONLY, SolverInputError, field_labels, story_labels


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
    assert all(labels.concept_of[i] == NEGATIVE_ONLY for i in range(n) if labels.baseline[i])
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
    assert [(p.positive, p.negatives) for p in labels.pairs] == [(0, (1,)), (3, (2,))]


def test_field_labels_errors():
    docs = [D("a", {"sentiment": "negative"}), D("b", {"sentiment": "neutral"})]
    with pytest.raises(SolverInputError, match="no document has the label field 'mood'"):
        field_labels(docs, label_field="mood", positive="x")
    with pytest.raises(SolverInputError, match=r"\['positive'\] have no positive documents"):
        field_labels(docs, label_field="sentiment", positive="positive")
    with pytest.raises(SolverInputError, match="every fitted document has sentiment='negative'"):
        field_labels(docs[:1], label_field="sentiment", positive="negative")
