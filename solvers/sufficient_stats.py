"""Streaming sufficient statistics: fed one pooled vector (or one trajectory basis) per document.

They replace materialising all samples: CAA and the per-head ranking need only per-concept sums and sums of
squares, the subspace method only sums of projectors. Each accumulator can be merged with another (Ray
fan-in) and exported as a dict of tensors (safetensors-friendly, for shipping between tasks).

Memory (d = width, C = concepts, float64):
- `MomentTotals`: 2 x (C + 1) x d (sums, and sums of squares when asked).
- `ProjectorTotals`: d x d for the total plus d x d per tracked concept; the caller picks how many concepts
  to track per pass from its memory budget (see docs/SOLVERS-IMPLEMENTATION.md).
- `PooledStore`: n_kept x d float32, capped per group by a deterministic reservoir.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

import torch
from actcache.solvers.labels import NEGATIVE_ONLY
from torch import Tensor

Device = str | torch.device


class MomentTotals:
    """Per-concept sums (and sums of squares) of pooled vectors; the last row is the negative-only group.

    Sums are taken of `x - shift` with `shift` the first vector seen (shifted-data algorithm), so variances
    of activations with a large common offset do not cancel catastrophically in float64.
    """

    def __init__(self, n_concepts: int, width: int, *, squares: bool = False, device: Device = "cpu") -> None:
        self.n_concepts, self.width = n_concepts, width
        self.device = torch.device(device)
        self.sums = torch.zeros(n_concepts + 1, width, dtype=torch.float64, device=self.device)  # (C+1, d)
        self.squares = torch.zeros_like(self.sums) if squares else None  # (C+1, d)
        self.counts = torch.zeros(n_concepts + 1, dtype=torch.int64, device=self.device)  # (C+1,)
        self.shift: Tensor | None = None  # (d,)

    def _row(self, concept: int) -> int:
        return self.n_concepts if concept == NEGATIVE_ONLY else concept

    def add(self, x: Tensor, concept: int) -> None:
        """Add one pooled vector `x` (d,) of a positive of `concept` (or NEGATIVE_ONLY)."""
        self.add_batch(x[None], torch.tensor([concept]))

    def add_batch(self, xs: Tensor, concepts: Tensor) -> None:
        """Add pooled vectors `xs` (n, d) with their concept indices (n,) (NEGATIVE_ONLY allowed)."""
        xs = xs.to(self.device, torch.float64)
        if self.shift is None:
            self.shift = xs[0].clone()
        rows = torch.where(concepts == NEGATIVE_ONLY, self.n_concepts, concepts).to(self.device)
        centred = xs - self.shift  # (n, d)
        self.sums.index_add_(0, rows, centred)
        if self.squares is not None:
            self.squares.index_add_(0, rows, centred * centred)
        self.counts.index_add_(0, rows, torch.ones_like(rows))

    def merge(self, other: MomentTotals) -> None:
        """Add `other`'s totals into these (re-expressed around this accumulator's shift)."""
        if other.shift is None:
            return
        if self.shift is None:
            self.shift = other.shift.to(self.device).clone()
        delta = (other.shift.to(self.device) - self.shift)[None]  # (1, d)
        n = other.counts.to(self.device, torch.float64)[:, None]  # (C+1, 1)
        sums = other.sums.to(self.device)
        if self.squares is not None:
            if other.squares is None:
                raise ValueError("cannot merge totals without squares into totals with squares")
            self.squares += other.squares.to(self.device) + 2 * delta * sums + n * delta * delta
        self.sums += sums + n * delta
        self.counts += other.counts.to(self.device)

    def _split(self, concept: int, table: Tensor) -> tuple[Tensor, Tensor]:
        """(row of `concept`, sum of every other row) of a per-group table."""
        own = table[self._row(concept)]
        return own, table.sum(dim=0) - own

    def n_positive(self, concept: int) -> int:
        return int(self.counts[self._row(concept)])

    def n_negative(self, concept: int) -> int:
        return int(self.counts.sum() - self.counts[self._row(concept)])

    def means(self, concept: int) -> tuple[Tensor, Tensor]:
        """(mean of the positives, mean of the negatives) of `concept`, float64 (d,) each.

        mean(N_c) = (S - S_c) / (n - n_c) with S over every fitted document: the totals formula of SOLVERS.md.
        """
        if self.shift is None:
            raise ValueError("no document was added")
        s_pos, s_neg = self._split(concept, self.sums)
        n_pos, n_neg = max(self.n_positive(concept), 1), max(self.n_negative(concept), 1)
        return self.shift + s_pos / n_pos, self.shift + s_neg / n_neg

    def diff(self, concept: int) -> Tensor:
        """mean(P_c) - mean(N_c), float64 (d,)."""
        mean_pos, mean_neg = self.means(concept)
        return mean_pos - mean_neg

    def negative_std(self, concept: int) -> Tensor:
        """Per-coordinate sample standard deviation (ddof=1) over the negatives of `concept`, float64 (d,)."""
        if self.squares is None:
            raise ValueError("negative_std needs MomentTotals(..., squares=True)")
        _, s_neg = self._split(concept, self.sums)
        _, q_neg = self._split(concept, self.squares)
        n = self.n_negative(concept)
        if n < 2:
            return torch.zeros_like(s_neg)
        var = (q_neg - s_neg * s_neg / n) / (n - 1)
        return var.clamp_min(0).sqrt()

    def state_dict(self) -> dict[str, Tensor]:
        state = {"sums": self.sums, "counts": self.counts}
        if self.squares is not None:
            state["squares"] = self.squares
        if self.shift is not None:
            state["shift"] = self.shift
        return state

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Tensor], *, device: Device = "cpu") -> MomentTotals:
        rows, width = state["sums"].shape
        out = cls(rows - 1, width, squares="squares" in state, device=device)
        out.sums.copy_(state["sums"])
        out.counts.copy_(state["counts"])
        if out.squares is not None:
            out.squares.copy_(state["squares"])
        out.shift = state["shift"].to(out.device, torch.float64).clone() if "shift" in state else None
        return out


class ProjectorTotals:
    """Sums of projectors V_i V_i^T of document trajectory bases, in total and for tracked concepts.

    `with_total` keeps T (every fitted document, d x d); `concepts` lists the concepts whose T_c (d x d each)
    is kept. A pass that tracks every concept decomposes each document once; under a memory budget the
    caller tracks a few concepts per pass and, in later passes, feeds only those concepts' positives into
    a `ProjectorTotals(with_total=False)` (see `actcache.solvers.layer_pass.subspace_batches`).

    Bases are buffered up to `flush_columns` columns and added with one (d, K) x (K, d) product per
    total, so the d x d float64 accumulators are touched once per flush, not once per document.
    """

    def __init__(
        self,
        width: int,
        *,
        concepts: Iterable[int] = (),
        with_total: bool = True,
        device: Device = "cpu",
        flush_columns: int = 1024,
    ) -> None:
        self.width, self.flush_columns = width, flush_columns
        self.device = torch.device(device)
        keys: list[int | None] = ([None] if with_total else []) + list(concepts)  # None: the total T
        self._sums = {k: torch.zeros(width, width, dtype=torch.float64, device=self.device) for k in keys}
        self._counts: dict[int | None, int] = dict.fromkeys(keys, 0)
        self._pending: list[tuple[Tensor, int]] = []
        self._pending_columns = 0

    @property
    def has_total(self) -> bool:
        return None in self._sums

    @property
    def concepts(self) -> list[int]:
        return [k for k in self._sums if k is not None]

    def wants(self, concept: int) -> bool:
        """Whether a document of `concept` (or NEGATIVE_ONLY) contributes: decompose it only if so."""
        return self.has_total or concept in self._sums

    def add(self, basis: Tensor, concept: int) -> None:
        """Add one document's orthonormal basis `basis` (d, k) of a positive of `concept` / NEGATIVE_ONLY."""
        if not self.wants(concept):
            return
        self._pending.append((basis.to(self.device, torch.float32), concept))
        self._pending_columns += basis.shape[1]
        for key in (None, concept):
            if key in self._counts:
                self._counts[key] += 1
        if self._pending_columns >= self.flush_columns:
            self.flush()

    def flush(self) -> None:
        """Add the buffered bases into the float64 totals."""
        for key, total in self._sums.items():
            cols = [b for b, c in self._pending if key is None or c == key]
            if cols:
                w = torch.cat(cols, dim=1)  # (d, K)
                total += (w @ w.T).to(torch.float64)
        self._pending.clear()
        self._pending_columns = 0

    def total(self) -> tuple[Tensor, int]:
        """(T (d, d), number of documents) over every fitted document."""
        if not self.has_total:
            raise ValueError("these projector totals were built with_total=False")
        self.flush()
        return self._sums[None], self._counts[None]

    def concept_total(self, concept: int) -> tuple[Tensor, int]:
        """(T_c (d, d), number of positives) of a tracked concept."""
        if concept not in self._sums:
            raise ValueError(f"concept {concept} is not tracked by these projector totals")
        self.flush()
        return self._sums[concept], self._counts[concept]

    def release(self, concept: int) -> None:
        """Drop a tracked concept's T_c once it is solved: frees d x d while later batches are read."""
        self.flush()
        del self._sums[concept], self._counts[concept]

    def merge(self, other: ProjectorTotals) -> None:
        if set(self._sums) != set(other._sums):
            raise ValueError("cannot merge projector totals that track different concepts")
        self.flush()
        other.flush()
        for key, total in other._sums.items():
            self._sums[key] += total.to(self.device)
            self._counts[key] += other._counts[key]

    @staticmethod
    def bytes_needed(width: int, n_matrices: int, flush_columns: int = 1024) -> int:
        """Memory of `n_matrices` d x d float64 totals plus the column buffer: what a budget divides by."""
        return n_matrices * width * width * 8 + (width * flush_columns * 4 if n_matrices else 0)


class PooledStore:
    """Pooled vectors of chosen documents, at most `cap` per group, kept by a seeded reservoir.

    Used for what needs individual samples: the quality PCA and alignments (group = concept, capped) and the
    paired aggregators (every paired document, uncapped). Kept on the CPU in float32.
    """

    def __init__(self, groups: Mapping[int, int], *, cap: int | None = None, seed: int = 0) -> None:
        self.groups = dict(groups)  # doc index -> group
        self.cap = cap
        self._rng = random.Random(seed)
        self._seen: dict[int, int] = {}
        self.kept: dict[int, dict[int, Tensor]] = {}  # group -> doc index -> (d,)

    def add(self, doc: int, x: Tensor) -> None:
        """Offer document `doc`'s pooled vector `x` (d,); ignored unless the document belongs to a group."""
        group = self.groups.get(doc)
        if group is None:
            return
        kept = self.kept.setdefault(group, {})
        seen = self._seen.get(group, 0)
        self._seen[group] = seen + 1
        vec = x.detach().to("cpu", torch.float32).clone()
        if self.cap is None or len(kept) < self.cap:
            kept[doc] = vec
            return
        slot = self._rng.randrange(seen + 1)
        if slot < self.cap:
            del kept[sorted(kept)[slot]]
            kept[doc] = vec

    def vectors(self, group: int) -> tuple[list[int], Tensor]:
        """(document indices ascending, their vectors (n, d)) kept for `group`."""
        kept = self.kept.get(group, {})
        docs = sorted(kept)
        return docs, torch.stack([kept[i] for i in docs]) if docs else torch.empty(0)

    def vector(self, doc: int) -> Tensor:
        return self.kept[self.groups[doc]][doc]

    def n_seen(self, group: int) -> int:
        return self._seen.get(group, 0)


class PositionShare:
    """How much of a pooled mean one token position carries: per position (the first `track` of the document),
    its norm's share of the summed token norms over the pooled rows, averaged over documents.

    Real models put a huge norm on the first token (the attention sink): a plain mean is then mostly that
    token, whatever the text says. `dominant()` finds a position above `threshold` so the job can warn.
    """

    def __init__(self, track: int = 16) -> None:
        self.track = track
        self._sums = torch.zeros(track, dtype=torch.float64)
        self.n_docs = 0

    def add(self, rows: Tensor, start: int) -> None:
        """`rows` (n_sel, d): the pooled rows of one document, the first at token position `start`."""
        norms = rows.float().norm(dim=1).double()
        total = float(norms.sum())
        self.n_docs += 1
        keep = min(len(norms), self.track - start)
        if total > 0 and keep > 0:
            self._sums[start : start + keep] += (norms[:keep] / total).cpu()

    @property
    def nbytes(self) -> int:
        return self._sums.nbytes

    def shares(self) -> Tensor:
        """(track,) mean share of each position over the documents seen."""
        return self._sums / max(self.n_docs, 1)

    def dominant(self, threshold: float = 0.5) -> tuple[int, float] | None:
        """(position, mean share) of the position carrying more than `threshold`, else None."""
        shares = self.shares()
        position = int(shares.argmax())
        return (position, float(shares[position])) if float(shares[position]) > threshold else None
