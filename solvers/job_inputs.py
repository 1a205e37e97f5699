"""What a solve or sweep checks before reading any activation: labels, layers, poolings, device, output path.

Every check fails with one line naming the problem and the fix, so bad input costs no streaming time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from actcache.solvers.aggregators import AGGREGATORS
from actcache.solvers.errors import SolverInputError
from actcache.solvers.labels import LabelSets, field_labels, story_labels
from actcache.solvers.pooling import Pooling, parse_pooling
from actcache.storage.selection import select_layers


@dataclass(frozen=True)
class LabelSpec:
    """Where labels come from: the story layout (`concept`/`role`), or one JSONL field and its positive value;
    which field names the pairs (label-field mode), and which field and values split train from test."""

    label_field: str | None = None
    positive: str | None = None
    split_field: str | None = None
    min_positives: int = 1
    concepts: tuple[str, ...] | None = None
    pair_field: str | None = None
    train_value: str = "train"
    test_value: str = "test"

    def to_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in ("label_field", "positive", "split_field", "min_positives", "concepts",
                                              "pair_field", "train_value", "test_value")}


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
                            pair_field=spec.pair_field, split_field=spec.split_field,
                            train_value=spec.train_value, test_value=spec.test_value)
    if spec.pair_field is not None:
        raise SolverInputError("--pair-field applies with --label-field; story labels pair each framing with its "
                               "scenario's baseline")
    return story_labels(docs, min_positives=spec.min_positives, concepts=spec.concepts, split_field=spec.split_field,
                        train_value=spec.train_value, test_value=spec.test_value)


def check_pairs(labels: LabelSets, methods: Sequence[str]) -> None:
    """The pair-based aggregators need explicit pairs for every concept: refused before any activation is read."""
    paired = [m for m in methods if m in AGGREGATORS]
    if not paired:
        return
    if labels.pairing is None:
        raise SolverInputError(
            f"aggregator(s) {paired} fit pairs, and label-field mode has none unless you name them: pass "
            f"--pair-field FIELD (documents sharing its value form a pair: one positive, one or more negatives), "
            f"or drop {', '.join(paired)}"
        )
    unpaired = [c for k, c in enumerate(labels.concepts) if not labels.pairs_of(k)]
    if unpaired:
        raise SolverInputError(
            f"concept(s) {unpaired} have no pairs ({labels.pairing}) for aggregator(s) {paired}: add paired "
            f"documents or drop {', '.join(paired)}"
        )


def resolve_layers(spec: str | Sequence[int], cached: Sequence[int], n_layers: int | None = None) -> tuple[int, ...]:
    """'all', '8,15', '-1' or a list -> layers, each of which must be in the cache.

    `n_layers`: the model's decoder layer count (`model_layer_count(reader.fingerprint)`), from whose end a negative
    layer counts, as in the build: -1 is the model's last layer, whether or not the cache holds it.
    """
    wanted, missing = select_layers(spec, cached, n_layers)
    if missing:
        counted = (f" (negative layers count back from the model's {n_layers} layers: -1 is layer {n_layers - 1})"
                   if n_layers is not None and any(layer < 0 for layer in missing) else "")
        raise SolverInputError(
            f"layer(s) {missing} not in the cache{counted}: it holds layers {list(cached)}; pick from these "
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


# what a solve, a sweep, a probe, a neighbors, a geometry or a logit-lens output folder holds
OUTPUT_MARKERS = ("readout.json", "comparison.json", "metrics.json", "neighbors.json", "geometry.json",
                  "logit_lens.json")


def check_output(out_dir: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """The output folder must not exist, unless `overwrite` and it is an earlier solve/sweep output or empty
    (so --overwrite can never delete a folder of other files). The new output replaces it atomically."""
    out = Path(out_dir)
    if not out.exists():
        return out
    if not overwrite:
        raise SolverInputError(f"output directory {out} exists: pass --overwrite to replace it, or choose a new path")
    earlier = out.is_dir() and (not any(out.iterdir()) or any((out / m).is_file() for m in OUTPUT_MARKERS))
    if not earlier:
        raise SolverInputError(
            f"output path {out} is not an earlier solve or sweep output, nor an analysis's "
            f"(no {' or '.join(OUTPUT_MARKERS)}): "
            f"--overwrite only replaces those; choose a new path"
        )
    return out
