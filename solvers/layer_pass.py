"""One streaming pass over one (hook, layer): every document read once feeds every accumulator asked for.

The job layer creates one `LayerPass` per (hook, layer) stream, calls `feed(doc_index, matrix)` for each
document the reader yields, then solves from the accumulators (see docs/SOLVERS-IMPLEMENTATION.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from actcache.solvers.aggregators import pair_store
from actcache.solvers.errors import SolverInputError
from actcache.solvers.finite import all_finite
from actcache.solvers.labels import LabelSets
from actcache.solvers.pooling import Pooling
from actcache.solvers.subspace import trajectory_basis
from actcache.solvers.sufficient_stats import Device, MomentTotals, PooledStore, PositionShare, ProjectorTotals
from torch import Tensor


@dataclass(frozen=True)
class PassPlan:
    """What one pass accumulates.

    poolings: pooled variants (each gets its own MomentTotals, and stores when asked);
    squares: keep sums of squares (per-head negative std on attn_z);
    subspace_concepts: concepts whose projector total T_c is kept (None: no subspace at all);
    subspace_total: keep T over every fitted document (False in later, per-concept passes);
    subspace_rank: keep at most this many singular vectors per document (None: all);
    quality_cap: keep up to this many pooled positives per concept for the quality report (None: none);
    pairs: keep the pooled vectors of paired documents for the aggregators.
    """

    poolings: tuple[Pooling, ...]
    squares: bool = False
    subspace_concepts: tuple[int, ...] | None = None
    subspace_total: bool = True
    subspace_rank: int | None = None
    quality_cap: int | None = None
    pairs: bool = False

    def memory_bytes(self, labels: LabelSets, width: int) -> int:
        """Upper bound of the accumulators' memory, for a --max-memory check before the pass starts."""
        rows = len(labels.concepts) + 1  # MomentTotals: sums (and squares), counts, the shift vector
        per_pooling = (2 if self.squares else 1) * rows * width * 8 + rows * 8 + width * 8
        stored = 0
        if self.quality_cap is not None:
            stored += sum(min(len(labels.positives(c)), self.quality_cap) for c in range(len(labels.concepts)))
        if self.pairs:
            stored += len(pair_store(labels).groups)
        matrices = 0
        if self.subspace_concepts is not None:
            matrices = len(self.subspace_concepts) + int(self.subspace_total)
        n_pool = len(self.poolings)
        shares = sum(p.kind != "last" for p in self.poolings) * PositionShare().nbytes
        return n_pool * (per_pooling + stored * width * 4) + shares + ProjectorTotals.bytes_needed(width, matrices)


@dataclass(frozen=True)
class LayerStats:
    """What a finished pass hands to the solvers, keyed by pooling name (str(Pooling))."""

    moments: dict[str, MomentTotals]
    positives: dict[str, PooledStore]
    pairs: dict[str, PooledStore]
    projectors: ProjectorTotals | None
    position_share: dict[str, PositionShare]  # poolings that average several tokens


class LayerPass:
    """Accumulators of one (hook, layer) for a `PassPlan`; documents outside the fitted split are ignored.

    Pooled vectors are buffered and added `batch` at a time (one small tensor op per document is slow);
    `finish()` flushes and returns the statistics. Non-finite input is refused (it would spread through every
    sum); `source` (e.g. "resid_post layer 8") names where the rows came from in that error.
    """

    def __init__(
        self, labels: LabelSets, width: int, plan: PassPlan, *, device: Device = "cpu", batch: int = 256,
        source: str = "input",
    ) -> None:
        self.labels, self.width, self.plan, self.batch, self.source = labels, width, plan, batch, source
        self.device = torch.device(device)
        n_c = len(labels.concepts)
        self._moments = {str(p): MomentTotals(n_c, width, squares=plan.squares, device=device) for p in plan.poolings}
        self._positives: dict[str, PooledStore] = {}
        if plan.quality_cap is not None:
            groups = {i: cs for i, cs in enumerate(labels.concepts_of) if cs and labels.fit[i]}
            self._positives = {str(p): PooledStore(groups, cap=plan.quality_cap) for p in plan.poolings}
        self._pairs = {str(p): pair_store(labels) for p in plan.poolings} if plan.pairs else {}
        self._projectors: ProjectorTotals | None = None
        if plan.subspace_concepts is not None:
            self._projectors = ProjectorTotals(
                width, concepts=plan.subspace_concepts, with_total=plan.subspace_total, device=device
            )
        self._pooled: dict[str, list[Tensor]] = {str(p): [] for p in plan.poolings}
        self._shares = {str(p): PositionShare() for p in plan.poolings if p.kind != "last"}
        self._docs: list[int] = []  # the buffered documents, flushed with their pooled vectors

    def feed(self, doc: int, h: np.ndarray | Tensor) -> None:
        """Feed document `doc` (index into the labels) with its token matrix `h` (n_tok, width)."""
        if not self.labels.fit[doc]:
            return
        key, concepts = self.labels.keys[doc], self.labels.concepts_of[doc]
        x = torch.as_tensor(h).to(self.device)  # (n_tok, d)
        if x.shape[-1] != self.width:
            raise ValueError(f"document {key}: width {x.shape[-1]} but the pass expects {self.width}")
        if not all_finite(x):
            raise SolverInputError(
                f"{self.source}: document {key} has non-finite values (NaN/inf): run `actcache verify` on the "
                f"cache; if it passes, the model produced them: rebuild in bfloat16 or float32, or leave it out"
            )
        for pooling in self.plan.poolings:
            name = str(pooling)
            pooled = pooling(x, key)  # (d,)
            if name in self._shares:
                rows = pooling.token_slice(x.shape[0], key)
                self._shares[name].add(x[rows], rows.start)
            self._pooled[name].append(pooled.clone())  # a view would keep the whole stream block alive
            if name in self._positives:
                self._positives[name].add(doc, pooled)
            if name in self._pairs:
                self._pairs[name].add(doc, pooled)
        self._docs.append(doc)
        if len(self._docs) >= self.batch:
            self._flush()
        if self._projectors is not None and self._projectors.wants(concepts):
            self._projectors.add(trajectory_basis(x, self.plan.subspace_rank), concepts)

    def _flush(self) -> None:
        if not self._docs:
            return
        members = torch.from_numpy(self.labels.membership(self._docs))  # (n, C) bool
        for name, rows in self._pooled.items():
            self._moments[name].add_batch(torch.stack(rows), members)
            rows.clear()
        self._docs.clear()

    def finish(self) -> LayerStats:
        """Flush the buffers and hand over the accumulators (the pass is done after this)."""
        self._flush()
        if self._projectors is not None:
            self._projectors.flush()
        return LayerStats(self._moments, self._positives, self._pairs, self._projectors, self._shares)


def subspace_batches(concepts: Sequence[int], width: int, budget_bytes: int) -> list[tuple[int, ...]]:
    """Split `concepts` into passes whose projector totals fit `budget_bytes`.

    The first pass holds T and as many T_c as fit; each later pass holds only its own T_c (its positives
    are decomposed a second time; every other document exactly once). One batch means one pass.
    """
    buffer = ProjectorTotals.bytes_needed(width, 1) - width * width * 8
    matrices = (budget_bytes - buffer) // (width * width * 8)
    if matrices < 2:
        need = ProjectorTotals.bytes_needed(width, 2) / 2**30
        raise SolverInputError(
            f"the subspace method at width {width} needs at least {need:.2f} GiB for its totals "
            f"(two {width}x{width} float64 matrices): raise the memory budget or leave subspace out"
        )
    first, rest = list(concepts[: matrices - 1]), list(concepts[matrices - 1 :])
    return [tuple(first)] + [tuple(rest[i : i + matrices]) for i in range(0, len(rest), matrices)]
