"""Tokenize a corpus, key each document by content, and cut it into units and length-sorted batches.

The plan depends only on the corpus and the settings, never on what is already cached, so a build that was killed
and rerun recomputes exactly the units it lacked, with the same batches: the resumed cache is bit-identical.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from actcache.storage.annotations import merge_metas
from actcache.storage.fingerprint import canonical_json

from .settings import BuildSettingsError

__all__ = ["TokenizedDoc", "Unit", "tokenize_documents", "plan_units", "pending_units", "document_key",
           "corpus_metadata"]


@dataclass(frozen=True)
class TokenizedDoc:
    key: str
    ids: np.ndarray  # (n_tokens,) int64, already truncated
    meta: dict[str, Any]
    original_tokens: int
    text: str = ""  # the document as the corpus gave it (stored unless --no-text)

    @property
    def n_tokens(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Unit:
    """A commit unit: documents in storage order, split into batches of consecutive documents."""

    unit_id: str
    docs: tuple[TokenizedDoc, ...]
    batch_size: int

    @property
    def n_tokens(self) -> int:
        return sum(d.n_tokens for d in self.docs)

    def batches(self) -> list[tuple[TokenizedDoc, ...]]:
        return [self.docs[i:i + self.batch_size] for i in range(0, len(self.docs), self.batch_size)]


def document_key(text: str, tokenizer_digest: str, max_length: int, truncation_side: str) -> str:
    """Content address of a document: what it says, how it is tokenized and how it is cut."""
    payload = canonical_json([text, tokenizer_digest, max_length, truncation_side])
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def tokenize_documents(texts: Sequence[str], metas: Sequence[dict[str, Any]], tokenizer: Any, *,
                       tokenizer_digest: str, max_length: int, truncation_side: str = "right",
                       ) -> list[TokenizedDoc]:
    """Tokenize once, truncate explicitly (recorded per document); a repeated text is stored once (with a
    warning), keeping the labels of every occurrence (`corpus_metadata`)."""
    if max_length < 1:
        raise BuildSettingsError(f"--max-length must be at least 1, got {max_length}")
    merged = corpus_metadata(texts, metas, tokenizer_digest=tokenizer_digest, max_length=max_length,
                             truncation_side=truncation_side)
    encoded = tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]
    docs: dict[str, TokenizedDoc] = {}
    repeats = 0
    for text, ids in zip(texts, encoded, strict=True):
        key = document_key(text, tokenizer_digest, max_length, truncation_side)
        if key in docs:
            repeats += 1
            continue
        kept = ids[:max_length] if truncation_side == "right" else ids[-max_length:]
        docs[key] = TokenizedDoc(key, np.asarray(kept, dtype=np.int64), merged[key], len(ids), text)
    if repeats:
        warnings.warn(f"{repeats} document(s) repeat an earlier text and are stored once; fields whose labels "
                      f"differ between the repeats keep every value, as a list in corpus order", stacklevel=2)
    return list(docs.values())


def corpus_metadata(texts: Sequence[str], metas: Sequence[dict[str, Any]], *, tokenizer_digest: str,
                    max_length: int, truncation_side: str) -> dict[str, dict[str, Any]]:
    """Each distinct document's labels by key, in corpus order: what a build stores and `actcache label` publishes.

    A text met several times is one document whose differing fields list every occurrence's value (merge_metas).
    """
    occurrences: dict[str, list[dict[str, Any]]] = {}
    for text, meta in zip(texts, metas, strict=True):
        occurrences.setdefault(document_key(text, tokenizer_digest, max_length, truncation_side), []).append(meta)
    return {key: merge_metas(found) for key, found in occurrences.items()}


def plan_units(docs: Sequence[TokenizedDoc], *, unit_tokens: int, batch_size: int) -> list[Unit]:
    """Sort by length (little padding), then cut into units of about `unit_tokens` tokens."""
    if batch_size < 1:
        raise BuildSettingsError(f"--batch-size must be at least 1, got {batch_size}")
    ordered = sorted(docs, key=lambda d: (d.n_tokens, d.key))
    units: list[Unit] = []
    current: list[TokenizedDoc] = []
    size = 0
    for doc in ordered:
        current.append(doc)
        size += doc.n_tokens
        if size >= unit_tokens:
            units.append(_unit(current, batch_size))
            current, size = [], 0
    if current:
        units.append(_unit(current, batch_size))
    return units


def pending_units(units: Sequence[Unit], committed: set[str] | Any) -> tuple[list[Unit], int]:
    """The work left: units minus committed documents, and how many documents were reused.

    A unit with nothing cached runs exactly as planned; one partly cached (an append) runs only what it lacks.
    """
    todo: list[Unit] = []
    reused = 0
    for unit in units:
        missing = [d for d in unit.docs if d.key not in committed]
        reused += len(unit.docs) - len(missing)
        if len(missing) == len(unit.docs):
            todo.append(unit)
        elif missing:
            todo.append(_unit(missing, unit.batch_size))
    return todo, reused


def _unit(docs: Sequence[TokenizedDoc], batch_size: int) -> Unit:
    unit_id = hashlib.sha256("\n".join(d.key for d in docs).encode()).hexdigest()[:32]
    return Unit(unit_id, tuple(docs), batch_size)
