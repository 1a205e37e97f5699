"""Streaming sufficient statistics: fed one pooled vector (or one trajectory basis) per document.

They replace materialising all samples: CAA and the per-head ranking need only per-concept sums and sums of
squares, the subspace method only sums of projectors. Each accumulator can be merged with another (Ray
fan-in) and exported as a dict of tensors (safetensors-friendly, for shipping between tasks).

A document may be a positive of several concepts (the same text labelled several times): it counts once in
every concept it belongs to and once in the totals over every document, never in those concepts' negatives.

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
from torch import Tensor

Device = str | torch.device


class MomentTotals:
    """Per-concept sums (and sums of squares) of pooled vectors; the last row sums every document once.

    Row c sums the positives of concept c (a document of several concepts is in each of their rows); the
    negatives of c are every document minus c's row, so a document that is a positive of no concept counts
    only in the last row: a negative of every concept.

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

    def add(self, x: Tensor, concepts: Iterable[int]) -> None:
        """Add one pooled vector `x` (d,) of a positive of each of `concepts` (none: a negative of every one)."""
        members = torch.zeros(1, self.n_concepts, dtype=torch.bool)
        members[0, list(concepts)] = True
        self.add_batch(x[None], members)

    def add_batch(self, xs: Tensor, members: Tensor) -> None:
        """Add pooled vectors `xs` (n, d); `members` (n, C) bool says which concepts each is a positive of."""
        if tuple(members.shape) != (xs.shape[0], self.n_concepts):
            raise ValueError(f"membership shape {tuple(members.shape)} != ({xs.shape[0]}, {self.n_concepts})")
        xs = xs.to(self.device, torch.float64)
        if self.shift is None:
            self.shift = xs[0].clone()
        docs, concepts = members.to(self.device).nonzero(as_tuple=True)  # one entry per (document, its concept)
        centred = xs - self.shift  # (n, d)
        self.sums.index_add_(0, concepts, centred[docs])
        self.sums[self.n_concepts] += centred.sum(dim=0)
        if self.squares is not None:
            squared = centred * centred
            self.squares.index_add_(0, concepts, squared[docs])
            self.squares[self.n_concepts] += squared.sum(dim=0)
        self.counts.index_add_(0, concepts, torch.ones_like(concepts))
        self.counts[self.n_concepts] += xs.shape[0]

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
        """(`concept`'s row: its positives, the every-document row minus it: its negatives) of a table."""
        own = table[concept]
        return own, table[self.n_concepts] - own

    def n_positive(self, concept: int) -> int:
        return int(self.counts[concept])

    def n_negative(self, concept: int) -> int:
        return int(self.counts[self.n_concepts] - self.counts[concept])

    def means(self, concept: int) -> tuple[Tensor, Tensor]:
        """(mean of the positives, mean of the negatives) of `concept`, float64 (d,) each.

        mean(N_c) = (S - S_c) / (n - n_c) with S over every fitted document (each once, whatever its number of
        concepts): the totals formula of SOLVERS.md.
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

    `with_total` keeps T (every fitted document once, d x d); `concepts` lists the concepts whose T_c (d x d
    each) is kept; a document adds into the T_c of every tracked concept it is a positive of. A pass that tracks
    every concept decomposes each document once; under a memory budget the caller tracks a few concepts per pass
    and, in later passes, feeds only those concepts' positives into a `ProjectorTotals(with_total=False)` (see
    `actcache.solvers.layer_pass.subspace_batches`).

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
        self._pending: list[tuple[Tensor, frozenset[int]]] = []
        self._pending_columns = 0

    @property
    def has_total(self) -> bool:
        return None in self._sums

    @property
    def concepts(self) -> list[int]:
        return [k for k in self._sums if k is not None]

    def wants(self, concepts: Iterable[int]) -> bool:
        """Whether a positive of `concepts` (none: a negative of every concept) contributes: decompose it only
        if so."""
        return self.has_total or any(c in self._sums for c in concepts)

    def add(self, basis: Tensor, concepts: Iterable[int]) -> None:
        """Add one document's orthonormal basis `basis` (d, k); the document is a positive of `concepts`."""
        members = frozenset(concepts)
        if not self.wants(members):
            return
        self._pending.append((basis.to(self.device, torch.float32), members))
        self._pending_columns += basis.shape[1]
        for key in self._counts:
            if key is None or key in members:
                self._counts[key] += 1
        if self._pending_columns >= self.flush_columns:
            self.flush()

    def flush(self) -> None:
        """Add the buffered bases into the float64 totals: one product per group of documents with the same
        concepts, added to T and to each tracked T_c among them (not one product per total: T would redo every
        column the T_c already multiplied). Grouped by all of a document's concepts, not only the tracked ones,
        so that T and each T_c come out the same whichever concepts a pass tracks."""
        groups: dict[frozenset[int], list[Tensor]] = {}
        for basis, members in self._pending:
            groups.setdefault(members, []).append(basis)
        for members, cols in groups.items():
            w = torch.cat(cols, dim=1)  # (d, K)
            gram = w @ w.T  # (d, d) float32
            for key, total in self._sums.items():
                if key is None or key in members:
                    total += gram  # accumulated in float64
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
    """Pooled vectors of chosen documents, at most `cap` per group, kept by a seeded reservoir per group.

    Used for what needs individual samples: the quality PCA and alignments (groups = the concepts a document is
    a positive of, capped) and the paired aggregators (every paired document, one group, uncapped). A document
    in several groups is offered to each group's reservoir; its vector is held once. Kept on the CPU in float32.
    """

    def __init__(self, groups: Mapping[int, Iterable[int]], *, cap: int | None = None, seed: int = 0) -> None:
        self.groups = {doc: tuple(g) for doc, g in groups.items() if g}  # doc index -> its groups
        self.cap = cap
        self._rng = random.Random(seed)
        self._seen: dict[int, int] = {}
        self.kept: dict[int, set[int]] = {}  # group -> kept doc indices
        self._vectors: dict[int, Tensor] = {}  # doc index -> (d,), shared by its groups

    def add(self, doc: int, x: Tensor) -> None:
        """Offer document `doc`'s pooled vector `x` (d,) to each of its groups (ignored if it has none)."""
        groups = self.groups.get(doc, ())
        if not groups:
            return
        vec = x.detach().to("cpu", torch.float32).clone()
        for group in groups:
            kept = self.kept.setdefault(group, set())
            seen = self._seen.get(group, 0)
            self._seen[group] = seen + 1
            if self.cap is None or len(kept) < self.cap:
                kept.add(doc)
                self._vectors[doc] = vec
                continue
            slot = self._rng.randrange(seen + 1)
            if slot < self.cap:
                evicted = sorted(kept)[slot]
                kept.discard(evicted)
                kept.add(doc)
                self._vectors[doc] = vec
                if not any(evicted in self.kept.get(g, ()) for g in self.groups[evicted]):
                    del self._vectors[evicted]

    def vectors(self, group: int) -> tuple[list[int], Tensor]:
        """(document indices ascending, their vectors (n, d)) kept for `group`."""
        docs = sorted(self.kept.get(group, ()))
        return docs, torch.stack([self._vectors[i] for i in docs]) if docs else torch.empty(0)

    def vector(self, doc: int) -> Tensor:
        return self._vectors[doc]

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
