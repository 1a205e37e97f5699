"""What a probe predicts: each labelled document's targets, per document or per token, and its split.

A document label (`doc.meta[F]`, the current annotation version) is one target per document, or, at token
level, the same target for every token. A per-token list (`token_labels` in the JSONL: one value per token after
tokenization, null for an unlabelled token) is checked against the document's token count; a truncated document
keeps the labels of the tokens the cache kept. Targets are encoded once here (classify: 1.0 for the positive class;
regress: the number; cluster: the index of the label's name) so the fitting code sees only floats (NaN: no label).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from actcache.solvers.errors import SolverInputError
from actcache.solvers.labels import DocumentLike, describe_fields, describe_values, split_masks

__all__ = ["TASKS", "DocTargets", "ProbeTargets", "Task", "probe_targets"]

Task = Literal["classify", "regress", "cluster"]
TASKS: tuple[Task, ...] = ("classify", "regress", "cluster")


class _Doc(DocumentLike, Protocol):
    n_tokens: int
    original_tokens: int


@dataclass(frozen=True)
class DocTargets:
    """One labelled document: raw labels (one per token at token level, else one) and their encoded floats."""

    key: str
    split: str  # "train" | "test"
    labels: tuple[Any, ...]
    y: np.ndarray  # (n,) float64; NaN where a token has no label


@dataclass(frozen=True)
class ProbeTargets:
    docs: tuple[DocTargets, ...]
    token_level: bool
    classes: tuple[str, ...]  # cluster: label names (y is an index into them); else empty

    def split(self, name: str) -> list[DocTargets]:
        return [d for d in self.docs if d.split == name]

    def count(self, name: str) -> int:
        """Labelled samples (documents or tokens) of a split."""
        return int(sum(np.isfinite(d.y).sum() for d in self.split(name)))


def _raw_labels(doc: _Doc, field: str, token_level: bool, truncation_side: str) -> list[Any] | None:
    """The document's labels (per token at token level), None if it has none."""
    value = doc.meta.get(field)
    name = f"{doc.meta.get('source', doc.key)} ({doc.key[:12]})"
    if value is None:
        return None
    if not isinstance(value, list):
        return [value] * doc.n_tokens if token_level else [value]
    if not token_level:
        raise SolverInputError(
            f"document {name} has a list in {field!r} ({len(value)} values): a per-token label list needs "
            f"--pooling token, and a text labelled differently at each occurrence is ambiguous; relabel it"
        )
    if any(isinstance(v, list) for v in value):
        raise SolverInputError(f"document {name}: {field!r} holds lists of lists (the same text with different token "
                               f"labels at several occurrences); keep one labelling and relabel the cache")
    if len(value) == doc.n_tokens:
        return value
    if len(value) == doc.original_tokens:  # truncated by the build: keep the labels of the cached tokens
        return value[:doc.n_tokens] if truncation_side == "right" else value[len(value) - doc.n_tokens:]
    raise SolverInputError(
        f"document {name} has {len(value)} values in {field!r} but {doc.n_tokens} tokens after tokenization"
        f"{f' ({doc.original_tokens} before truncation)' if doc.original_tokens != doc.n_tokens else ''}: give one "
        f"label per token of the model's tokenizer (null for an unlabelled token)"
    )


def _encoder(task: Task, values: list[Any], field: str, positive: str | None
             ) -> tuple[Callable[[Any], float], tuple[str, ...]]:
    """(label -> float, class names) for the task, checked against every label value present."""
    if task == "cluster":
        classes = tuple(sorted({str(v) for v in values}))
        index = {c: float(k) for k, c in enumerate(classes)}
        return (lambda v: index[str(v)]), classes
    if task == "regress":
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v)]
        if bad:
            raise SolverInputError(f"--task regress needs finite numbers in {field!r}; found {describe_values(bad)}: "
                                   f"use --task classify or cluster for categories")
        return float, ()
    if positive is not None:
        if not any(str(v) == positive for v in values):
            raise SolverInputError(f"no label of {field!r} is {positive!r} (values: {describe_values(values)}): "
                                   f"name the positive class with --positive")
        return (lambda v: float(str(v) == positive)), ()
    if any(not isinstance(v, (bool, int, float)) or v not in (0, 1) for v in values):
        raise SolverInputError(f"labels of {field!r} are not 0/1 (values: {describe_values(values)}): name the "
                               f"positive class with --positive VALUE")
    return float, ()


def probe_targets(docs: Sequence[Any], *, field: str, task: Task, token_level: bool, positive: str | None = None,
                  split_field: str | None = "split", train_value: str = "train", test_value: str = "test",
                  truncation_side: str = "right") -> ProbeTargets:
    """Targets of every document that has `field`, each in the train or the test split (metrics are held out)."""
    if task not in TASKS:
        raise SolverInputError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    raw = [(d, _raw_labels(d, field, token_level, truncation_side)) for d in docs]
    labelled = [(d, labels) for d, labels in raw if labels is not None]
    if not labelled:
        raise SolverInputError(f"no document has the label field {field!r}; fields present: {describe_fields(docs)}; "
                               f"pass one of them with --label-field")
    if split_field is None:
        raise SolverInputError("probe metrics are on held-out documents: pass --split-field (e.g. split) naming a "
                               "field with train/test values")
    train, test = split_masks([d for d, _ in labelled], split_field, train_value, test_value)
    values = [v for _, labels in labelled for v in labels if v is not None]
    encode, classes = _encoder(task, values, field, positive)
    out = []
    for (doc, labels), is_train, is_test in zip(labelled, train, test, strict=True):
        if is_train or is_test:
            y = np.array([np.nan if v is None else encode(v) for v in labels], dtype=np.float64)
            out.append(DocTargets(doc.key, "train" if is_train else "test", tuple(labels), y))
    targets = ProbeTargets(tuple(out), token_level, classes)
    for split in ("train", "test"):
        if targets.count(split) == 0:
            value = train_value if split == "train" else test_value
            raise SolverInputError(f"no labelled {split} sample ({split_field}={value!r}): a probe is fitted on "
                                   f"train and scored on test; label some of each")
    if task == "classify":
        for split in ("train", "test"):
            ys = np.concatenate([d.y for d in targets.split(split)])
            ys = ys[np.isfinite(ys)]
            if ys.min() == ys.max():
                raise SolverInputError(f"the {split} split has only {'positives' if ys[0] else 'negatives'} of "
                                       f"{field!r}: a classifier and its AUROC need both classes in each split")
    return targets
