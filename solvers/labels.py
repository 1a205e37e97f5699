"""Label sets: which documents are positives of which concept, which are baselines, which are held out.

Built once from document metadata before any activation is read, so every streaming pass knows each
document's role up front. Negatives of concept c are every other fitted document (positives of other
concepts, baselines, other label values): the cross-concept contrast of SOLVERS.md.

Nothing here depends on the order in which the cache committed its units: pairs are explicit (a scenario's
baselines, or a `pair_field` value) and listed in corpus order (`source`, then `index`). A field may hold a list
(the same text labelled several times in one corpus, one value per occurrence): each value counts, so a
document may be a positive of several concepts at once (`concepts_of[i]` is a set of concept indices).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

import numpy as np
from actcache.solvers.errors import SolverInputError


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

    `concepts_of[i]` holds the solved concept indices document i is a positive of (ascending; several when the
    same text was labelled with several concepts, empty for a document that is a negative of every concept);
    `fit[i]` says document i feeds the solvers (labelled and in the train split); `test[i]` says it is held out
    for evaluation. A document is a negative of every fitted concept it is not a positive of.
    """

    concepts: tuple[str, ...]
    keys: tuple[str, ...]
    concepts_of: tuple[tuple[int, ...], ...]
    baseline: tuple[bool, ...]
    fit: tuple[bool, ...]
    test: tuple[bool, ...]
    pairs: tuple[Pair, ...]
    skipped: dict[str, int] = field(default_factory=dict)  # concept -> positives, below min_positives
    pairing: str | None = None  # how pairs were formed ("scenario baselines", "pair field 'x'"); None: no pairing

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
                for c in self.concepts_of[i]:
                    by_concept.setdefault(c, []).append(i)
            out[split] = (docs, by_concept)
        return out

    def positives(self, concept: int, split: str = "fit") -> list[int]:
        """Document indices of the positives of `concept` in the "fit" (or "test") split."""
        return list(self._members[split][1].get(concept, []))

    def negatives(self, concept: int, split: str = "fit") -> list[int]:
        """Document indices of the negatives of `concept`: every other labelled document of the split."""
        return [i for i in self._members[split][0] if concept not in self.concepts_of[i]]

    def membership(self, docs: Sequence[int] | None = None) -> np.ndarray:
        """(n, C) bool: row k says which concepts `docs[k]` (default: every document) is a positive of."""
        rows = range(self.n_docs) if docs is None else docs
        out = np.zeros((len(rows), len(self.concepts)), dtype=bool)
        for k, i in enumerate(rows):
            out[k, list(self.concepts_of[i])] = True
        return out

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
            "pairing": self.pairing,
            "skipped": dict(self.skipped),
        }


def meta_values(meta: Mapping[str, object], name: str) -> list[object]:
    """Every value of field `name`: none when absent, one per occurrence when a list, else the one value."""
    value = meta.get(name)
    values = value if isinstance(value, list) else [value]
    return [v for v in values if v is not None]


def _occurrences(meta: Mapping[str, object], names: Sequence[str]) -> list[dict[str, object]]:
    """The document's labellings, one per occurrence of its text in the corpus (list fields are aligned by
    occurrence; a scalar field holds for every occurrence)."""
    count = max((len(v) for n in names if isinstance(v := meta.get(n), list)), default=1)
    out = []
    for k in range(count):
        row: dict[str, object] = {}
        for n in names:
            value = meta.get(n)
            row[n] = (value[k] if k < len(value) else None) if isinstance(value, list) else value
        out.append(row)
    return out


def corpus_order(docs: Sequence[DocumentLike]) -> list[int]:
    """Document indices in corpus order: by `source`, then `index` (the loaders' position of the text in its
    file; a text met several times sorts at its first occurrence), then key. Never the cache's storage order."""

    def position(i: int) -> tuple[str, int, str]:
        source, index = meta_values(docs[i].meta, "source"), meta_values(docs[i].meta, "index")
        first = index[0] if index and isinstance(index[0], int) else -1
        return (str(source[0]) if source else "", first, docs[i].key)

    return sorted(range(len(docs)), key=position)


def describe_values(values: Iterable[object], limit: int = 5) -> str:
    """'a (12), b (3), ...': the most common values with their counts, for error messages."""
    counts = Counter(str(v) for v in values)
    shown = ", ".join(f"{v} ({n})" for v, n in counts.most_common(limit))
    return shown + (", ..." if len(counts) > limit else "") if counts else "none"


def describe_fields(docs: Sequence[DocumentLike], limit: int = 3, fields: int = 12) -> str:
    """'split: train (7), test (2); topic: cooking (5), sports (4)': the metadata fields (up to `fields` of them)
    with their most common values."""
    by_field: dict[str, list[object]] = {}
    for d in docs:
        for name in d.meta:
            by_field.setdefault(name, []).extend(meta_values(d.meta, name))
    if not by_field:
        return "the documents have no metadata fields"
    shown = [f"{name}: {describe_values(vals, limit)}" for name, vals in sorted(by_field.items())[:fields]]
    return "; ".join(shown) + (f"; and {len(by_field) - fields} more fields" if len(by_field) > fields else "")


def split_masks(
    docs: Sequence[DocumentLike], split_field: str | None, train_value: str, test_value: str
) -> tuple[list[bool], list[bool]]:
    """(is_train, is_test) per document; without a split field every document trains."""
    if split_field is None:
        return [True] * len(docs), [False] * len(docs)
    values = [meta_values(d.meta, split_field) for d in docs]
    if not any(values):
        raise SolverInputError(
            f"no document has the split field {split_field!r}; fields present: {describe_fields(docs)}; "
            f"pass one of them with --split-field"
        )
    present = [str(v[0]) if len(v) == 1 else repr(v) if v else "(missing)" for v in values]
    bad = sorted(set(present) - {train_value, test_value})
    if bad:
        raise SolverInputError(
            f"split field {split_field!r} has values {bad} besides {train_value!r}/{test_value!r} (values present: "
            f"{describe_values(present)}): relabel them, or name the split's values with --train-value and "
            f"--test-value"
        )
    return [p == train_value for p in present], [p == test_value for p in present]


def _count_and_filter(
    concept_sets: list[frozenset[str]], fit: list[bool], min_positives: int, requested: Sequence[str] | None,
    field_name: str,
) -> tuple[tuple[str, ...], dict[str, int]]:
    """Solved concepts (sorted) and skipped ones with their train positive counts."""
    counts = Counter(c for s, f in zip(concept_sets, fit, strict=True) if f for c in s)
    everywhere = sorted({c for s in concept_sets for c in s})
    names = sorted(requested) if requested is not None else everywhere
    missing = [c for c in names if counts[c] == 0]
    if missing:
        raise SolverInputError(
            f"concept(s) {missing} have no positive documents in the fitted split (values of {field_name!r} with "
            f"fitted positives: {describe_values(c for s, f in zip(concept_sets, fit, strict=True) if f for c in s)}"
            f"): pick from those, or add positives"
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
    they are still text about another concept. A text labelled with several solved concepts (list values) is a
    positive of each of them and a negative of none of them. Pairs: each positive with a scenario is paired with
    the mean of the fitted baselines of that scenario (once per concept it is a positive of); positives without a
    scenario baseline are unpaired. Pairs and each pair's baselines are listed in corpus order.
    """
    concept_sets: list[frozenset[str]] = []
    baseline: list[bool] = []
    occurrences = [_occurrences(d.meta, ("role", "concept", "scenario")) for d in docs]
    for d, rows in zip(docs, occurrences, strict=True):
        found: set[str] = set()
        for row in rows:
            role, concept = row["role"], row["concept"]
            if role == "positive":
                if not isinstance(concept, str) or not concept:
                    raise SolverInputError(f"document {d.key} has role positive but no concept: fix its metadata")
                found.add(concept)
            elif role not in ("baseline", None):
                raise SolverInputError(f"document {d.key} has role {role!r}: use 'positive' or 'baseline'")
        concept_sets.append(frozenset(found))
        baseline.append(any(row["role"] == "baseline" for row in rows))
    labelled = [bool(n) or b for n, b in zip(concept_sets, baseline, strict=True)]
    if not any(concept_sets):
        raise SolverInputError(
            "no document is a positive of any concept (meta role/concept missing): build the cache from a story "
            f"layout, or name a label field with --label-field FIELD --positive VALUE (fields present: "
            f"{describe_fields(docs)})"
        )
    train, test = split_masks(docs, split_field, train_value, test_value)
    fit = [lab and t for lab, t in zip(labelled, train, strict=True)]
    held = [lab and t for lab, t in zip(labelled, test, strict=True)]
    solved, skipped = _count_and_filter(concept_sets, fit, min_positives, concepts, "concept")
    index = {c: k for k, c in enumerate(solved)}
    concepts_of = tuple(tuple(sorted(index[c] for c in s if c in index)) for s in concept_sets)

    order = corpus_order(docs)
    by_scenario: dict[object, dict[int, None]] = {}  # scenario -> its fitted baselines, in corpus order
    for i in order:
        for row in occurrences[i]:
            if fit[i] and row["role"] == "baseline" and row["scenario"] is not None:
                by_scenario.setdefault(row["scenario"], {})[i] = None
    pairs = tuple(dict.fromkeys(
        Pair(index[str(row["concept"])], i, tuple(by_scenario[row["scenario"]]))
        for i in order if fit[i]
        for row in occurrences[i]
        if row["role"] == "positive" and row["concept"] in index and row["scenario"] in by_scenario
    ))
    positives = Counter(c for cs, f in zip(concepts_of, fit, strict=True) if f for c in cs)
    alone = [solved[c] for c, n in sorted(positives.items()) if n == sum(fit)]
    if alone:
        raise SolverInputError(f"concept {alone[0]!r} has no negatives (every fitted document is one of its "
                               f"positives; no other concept or baseline): add some")
    return LabelSets(
        solved,
        tuple(d.key for d in docs),
        concepts_of,
        tuple(baseline),
        tuple(fit),
        tuple(held),
        pairs,
        skipped,
        "scenario baselines",
    )


def field_labels(
    docs: Sequence[DocumentLike],
    *,
    label_field: str,
    positive: str,
    pair_field: str | None = None,
    split_field: str | None = None,
    train_value: str = "train",
    test_value: str = "test",
) -> LabelSets:
    """One concept (named `positive`) from a label field: documents with `positive` among their `label_field`
    values are its positives, documents with only other values its negatives, documents without the field are
    left out.

    Pairs come only from `pair_field`: the fitted documents sharing one of its values form a pair, which must hold
    exactly one positive and at least one negative (averaged). Documents without it are unpaired (they still
    count for every method but the aggregators). Without `pair_field` there are no pairs.
    """
    values = [[str(v) for v in meta_values(d.meta, label_field)] for d in docs]
    if not any(values):
        raise SolverInputError(
            f"no document has the label field {label_field!r}; fields present: {describe_fields(docs)}; "
            f"pass one of them with --label-field"
        )
    train, test = split_masks(docs, split_field, train_value, test_value)
    labelled = [bool(v) for v in values]
    fit = [lab and t for lab, t in zip(labelled, train, strict=True)]
    held = [lab and t for lab, t in zip(labelled, test, strict=True)]
    sets = [frozenset(v) for v in values]
    solved, _ = _count_and_filter(sets, fit, 1, [positive], label_field)
    concepts_of = tuple((0,) if positive in s else () for s in sets)
    if not any(f and not cs for f, cs in zip(fit, concepts_of, strict=True)):
        raise SolverInputError(
            f"every fitted document has {label_field}={positive!r}: negatives need another value of the field"
        )
    is_positive = [bool(cs) for cs in concepts_of]
    named = f"{label_field}={positive!r}"
    pairs = () if pair_field is None else _field_pairs(docs, pair_field, fit, is_positive, named)
    return LabelSets(
        solved, tuple(d.key for d in docs), concepts_of, (False,) * len(docs), tuple(fit), tuple(held), pairs,
        pairing=None if pair_field is None else f"pair field {pair_field!r}",
    )


def _field_pairs(docs: Sequence[DocumentLike], pair_field: str, fit: Sequence[bool], is_positive: Sequence[bool],
                 positive: str) -> tuple[Pair, ...]:
    """One pair per value of `pair_field` among the fitted documents, in corpus order of the positives."""
    order = corpus_order(docs)
    members: dict[str, list[int]] = {}
    for i in order:
        if fit[i]:
            for value in dict.fromkeys(str(v) for v in meta_values(docs[i].meta, pair_field)):
                members.setdefault(value, []).append(i)
    if not members:
        raise SolverInputError(
            f"no fitted document has the pair field {pair_field!r}; fields present: {describe_fields(docs)}; "
            f"pass the field that names each pair with --pair-field"
        )
    pairs = []
    for value, group in members.items():
        pos = [i for i in group if is_positive[i]]
        neg = tuple(i for i in group if not is_positive[i])
        if len(pos) != 1 or not neg:
            raise SolverInputError(
                f"pair {pair_field}={value!r} has {len(pos)} positive(s) and {len(neg)} negative(s) among the fitted "
                f"documents: a pair needs exactly one positive ({positive}) and at least one negative; fix the "
                f"{pair_field!r} values of the corpus (and relabel the cache with `actcache label`)"
            )
        pairs.append(Pair(0, pos[0], neg))
    rank = {i: r for r, i in enumerate(order)}
    return tuple(sorted(pairs, key=lambda p: rank[p.positive]))
