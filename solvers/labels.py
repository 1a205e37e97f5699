"""Label sets: which documents are positives of which concept, which are baselines, which are held out.

Built once from document metadata before any activation is read, so every streaming pass knows each
document's role up front. Negatives of concept c are every other fitted document (positives of other
concepts, baselines, other label values): the cross-concept contrast of SOLVERS.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

from actcache.solvers.errors import SolverInputError

NEGATIVE_ONLY = -1  # concept_of value of a document that is a negative for every concept


class DocumentLike(Protocol):
    """What labelling needs of a cached document: its key and metadata."""

    @property
    def key(self) -> str: ...

    @property
    def meta(self) -> Mapping[str, object]: ...


@dataclass(frozen=True)
class Pair:
    """A paired sample for the aggregators: a positive document against the mean of `negatives`."""

    concept: int
    positive: int
    negatives: tuple[int, ...]


@dataclass(frozen=True)
class LabelSets:
    """Per-document roles (indices follow the input document order).

    `concept_of[i]` is the solved concept index of a positive, else NEGATIVE_ONLY; `fit[i]` says document i
    feeds the solvers (labelled and in the train split); `test[i]` says it is held out for evaluation.
    """

    concepts: tuple[str, ...]
    keys: tuple[str, ...]
    concept_of: tuple[int, ...]
    baseline: tuple[bool, ...]
    fit: tuple[bool, ...]
    test: tuple[bool, ...]
    pairs: tuple[Pair, ...]
    skipped: dict[str, int] = field(default_factory=dict)  # concept -> positives, below min_positives

    @property
    def n_docs(self) -> int:
        return len(self.keys)

    @cached_property
    def _members(self) -> dict[str, tuple[list[int], dict[int, list[int]]]]:
        """Per split: (every document of the split, its documents by concept), built once."""
        out = {}
        for split, mask in (("fit", self.fit), ("test", self.test)):
            docs = [i for i, m in enumerate(mask) if m]
            by_concept: dict[int, list[int]] = {}
            for i in docs:
                by_concept.setdefault(self.concept_of[i], []).append(i)
            out[split] = (docs, by_concept)
        return out

    def positives(self, concept: int, split: str = "fit") -> list[int]:
        """Document indices of the positives of `concept` in the "fit" (or "test") split."""
        return list(self._members[split][1].get(concept, []))

    def negatives(self, concept: int, split: str = "fit") -> list[int]:
        """Document indices of the negatives of `concept`: every other labelled document of the split."""
        return [i for i in self._members[split][0] if self.concept_of[i] != concept]

    def pairs_of(self, concept: int) -> list[Pair]:
        return [p for p in self.pairs if p.concept == concept]

    def to_dict(self) -> dict[str, object]:
        return {
            "concepts": list(self.concepts),
            "n_fit": sum(self.fit),
            "n_test": sum(self.test),
            "n_positive": {c: len(self.positives(k)) for k, c in enumerate(self.concepts)},
            "n_baseline": sum(b and f for b, f in zip(self.baseline, self.fit, strict=True)),
            "n_pairs": len(self.pairs),
            "skipped": dict(self.skipped),
        }


def _splits(
    docs: Sequence[DocumentLike], split_field: str | None, train_value: str, test_value: str
) -> tuple[list[bool], list[bool]]:
    """(is_train, is_test) per document; without a split field every document trains."""
    if split_field is None:
        return [True] * len(docs), [False] * len(docs)
    values = [d.meta.get(split_field) for d in docs]
    bad = sorted({str(v) for v in values} - {train_value, test_value})
    if bad:
        raise SolverInputError(
            f"split field {split_field!r} has values {bad} besides {train_value!r}/{test_value!r}: "
            f"relabel them or pass train/test values that match"
        )
    return [v == train_value for v in values], [v == test_value for v in values]


def _count_and_filter(
    concept_names: list[str | None], fit: list[bool], min_positives: int, requested: Sequence[str] | None
) -> tuple[tuple[str, ...], dict[str, int]]:
    """Solved concepts (sorted) and skipped ones with their train positive counts."""
    counts = Counter(c for c, f in zip(concept_names, fit, strict=True) if c is not None and f)
    names = sorted(requested) if requested is not None else sorted({c for c in concept_names if c is not None})
    missing = [c for c in names if counts[c] == 0]
    if missing:
        raise SolverInputError(
            f"concept(s) {missing} have no positive documents in the fitted split: add positives or drop them"
        )
    solved = tuple(c for c in names if counts[c] >= min_positives)
    skipped = {c: counts[c] for c in names if counts[c] < min_positives}
    if not solved:
        raise SolverInputError(f"no concept has {min_positives} positives (counts {dict(counts)}): lower min_positives")
    return solved, skipped


def story_labels(
    docs: Sequence[DocumentLike],
    *,
    min_positives: int = 1,
    concepts: Sequence[str] | None = None,
    split_field: str | None = None,
    train_value: str = "train",
    test_value: str = "test",
) -> LabelSets:
    """Labels of the story layout (meta `role` positive|baseline, `concept`, `scenario`).

    Positives of concepts below `min_positives` (or outside `concepts`) stay in as negatives of the others:
    they are still text about another concept. Pairs: each positive with a scenario is paired with the mean
    of the fitted baselines of that scenario; positives without a scenario baseline are unpaired.
    """
    names: list[str | None] = []
    baseline: list[bool] = []
    for d in docs:
        role = d.meta.get("role")
        if role == "positive":
            concept = d.meta.get("concept")
            if not isinstance(concept, str) or not concept:
                raise SolverInputError(f"document {d.key} has role positive but no concept: fix its metadata")
            names.append(concept)
        elif role == "baseline" or role is None:
            names.append(None)
        else:
            raise SolverInputError(f"document {d.key} has role {role!r}: use 'positive' or 'baseline'")
        baseline.append(role == "baseline")
    labelled = [n is not None or b for n, b in zip(names, baseline, strict=True)]
    if not any(n is not None for n in names):
        raise SolverInputError(
            "no document is a positive of any concept (meta role/concept missing): build the cache from a "
            "story layout or use label_field mode"
        )
    train, test = _splits(docs, split_field, train_value, test_value)
    fit = [lab and t for lab, t in zip(labelled, train, strict=True)]
    held = [lab and t for lab, t in zip(labelled, test, strict=True)]
    solved, skipped = _count_and_filter(names, fit, min_positives, concepts)
    index = {c: k for k, c in enumerate(solved)}
    concept_of = tuple(index.get(n, NEGATIVE_ONLY) if n is not None else NEGATIVE_ONLY for n in names)

    by_scenario: dict[object, list[int]] = {}
    for i, d in enumerate(docs):
        if baseline[i] and fit[i] and d.meta.get("scenario") is not None:
            by_scenario.setdefault(d.meta["scenario"], []).append(i)
    pairs = tuple(
        Pair(concept_of[i], i, tuple(by_scenario[d.meta.get("scenario")]))
        for i, d in enumerate(docs)
        if fit[i] and concept_of[i] != NEGATIVE_ONLY and d.meta.get("scenario") in by_scenario
    )
    if sum(fit) == max(Counter(c for c, f in zip(concept_of, fit, strict=True) if f).values()):
        raise SolverInputError(f"concept {solved[0]!r} has no negatives (no other concept or baseline): add some")
    return LabelSets(
        solved,
        tuple(d.key for d in docs),
        concept_of,
        tuple(baseline),
        tuple(fit),
        tuple(held),
        pairs,
        skipped,
    )


def field_labels(
    docs: Sequence[DocumentLike],
    *,
    label_field: str,
    positive: str,
    split_field: str | None = None,
    train_value: str = "train",
    test_value: str = "test",
) -> LabelSets:
    """One concept (named `positive`) from a label field: documents with `label_field == positive` are its
    positives, documents with any other value its negatives, documents without the field are left out.

    Pairs: the k-th fitted positive with the k-th fitted negative, in document order (steering-vectors style
    index matching), up to the shorter list.
    """
    values = [d.meta.get(label_field) for d in docs]
    if all(v is None for v in values):
        raise SolverInputError(f"no document has the label field {label_field!r}: pick a field the cache has")
    train, test = _splits(docs, split_field, train_value, test_value)
    labelled = [v is not None for v in values]
    fit = [lab and t for lab, t in zip(labelled, train, strict=True)]
    held = [lab and t for lab, t in zip(labelled, test, strict=True)]
    names = [positive if str(v) == positive else None for v in values]
    solved, _ = _count_and_filter(names, fit, 1, [positive])
    concept_of = tuple(0 if n is not None else NEGATIVE_ONLY for n in names)
    if not any(f and c == NEGATIVE_ONLY for f, c in zip(fit, concept_of, strict=True)):
        raise SolverInputError(
            f"every fitted document has {label_field}={positive!r}: negatives need another value of the field"
        )
    pos = [i for i in range(len(docs)) if fit[i] and concept_of[i] == 0]
    neg = [i for i in range(len(docs)) if fit[i] and concept_of[i] == NEGATIVE_ONLY]
    pairs = tuple(Pair(0, p, (n,)) for p, n in zip(pos, neg, strict=False))
    return LabelSets(
        solved, tuple(d.key for d in docs), concept_of, (False,) * len(docs), tuple(fit), tuple(held), pairs
    )
