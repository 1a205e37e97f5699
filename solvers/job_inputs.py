"""What a solve or sweep checks before reading any activation: labels, layers, poolings, device, output path.

Every check fails with one line naming the problem and the fix, so bad input costs no streaming time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from actcache.solvers.errors import SolverInputError
from actcache.solvers.labels import LabelSets, field_labels, story_labels
from actcache.solvers.pooling import Pooling, parse_pooling
from actcache.storage.selection import select_layers


@dataclass(frozen=True)
class LabelSpec:
    """Where labels come from: the story layout (`concept`/`role`), or one JSONL field and its positive value."""

    label_field: str | None = None
    positive: str | None = None
    split_field: str | None = None
    min_positives: int = 1
    concepts: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in ("label_field", "positive", "split_field", "min_positives", "concepts")}


def build_labels(docs: Sequence, spec: LabelSpec) -> LabelSets:
    """LabelSets of the cache's documents (in `reader.documents()` order)."""
    if (spec.label_field is None) != (spec.positive is None):
        raise SolverInputError("--label-field and --positive go together: give both (or neither for story labels)")
    if not docs:
        raise SolverInputError("the cache holds no documents: build it from a corpus first")
    if spec.label_field is not None:
        if spec.concepts is not None:
            raise SolverInputError("--concepts applies to story labels; with --label-field the concept is --positive")
        return field_labels(docs, label_field=spec.label_field, positive=str(spec.positive),
                            split_field=spec.split_field)
    return story_labels(docs, min_positives=spec.min_positives, concepts=spec.concepts, split_field=spec.split_field)


def resolve_layers(spec: str | Sequence[int], cached: Sequence[int]) -> tuple[int, ...]:
    """'all', '8,15' or a list -> layers, each of which must be in the cache."""
    try:
        wanted, missing = select_layers(spec, cached)
    except ValueError as error:
        raise SolverInputError(str(error)) from None
    if missing:
        raise SolverInputError(
            f"layer(s) {missing} not in the cache: it holds layers {list(cached)}; pick from these "
            f"or rebuild the cache with --layers including them"
        )
    return wanted


def parse_poolings(spec: str | Sequence[str]) -> tuple[Pooling, ...]:
    """'last,mean' or a list of pooling strings -> unique poolings in order."""
    texts = spec.split(",") if isinstance(spec, str) else list(spec)
    poolings = tuple(dict.fromkeys(parse_pooling(t) for t in texts if t.strip()))
    if not poolings:
        raise SolverInputError("no pooling given: use e.g. last or last,mean")
    return poolings


def check_pooling_lengths(docs: Sequence, labels: LabelSets, poolings: Sequence[Pooling]) -> None:
    """Every document the solve reads must be long enough for every pooling: checked from the token counts."""
    for pooling in poolings:
        for i, doc in enumerate(docs):
            if (labels.fit[i] or labels.test[i]) and doc.n_tokens < pooling.min_tokens():
                raise SolverInputError(
                    f"document {doc.meta.get('source', doc.key)} ({doc.key[:12]}) has {doc.n_tokens} tokens but "
                    f"pooling {pooling} needs {pooling.min_tokens()}: choose a shorter pooling (e.g. last or "
                    f"mean) or drop the document"
                )


def resolve_device(device: str) -> str:
    """'cpu', 'cuda', 'cuda:N' or 'auto' (cuda when present) -> a torch device string."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SolverInputError(f"--device {device}: no CUDA device here; use --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise SolverInputError(f"--device {device!r}: use cpu, cuda or auto")
    return device


def check_new_output(out_dir: str | os.PathLike[str]) -> Path:
    """The output directory must not exist yet (a readout is never overwritten or mixed)."""
    out = Path(out_dir)
    if out.exists():
        raise SolverInputError(f"output directory {out} exists: choose a new path or remove it")
    return out
