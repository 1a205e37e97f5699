"""Which token rows a training read takes, and in what order (bookkeeping only: numpy, no chunk is read here).

A *unit* is a run of whole chunks of one segment: `unit_rows` rows, the largest chunk height among the requested
arrays (heights are powers of two, so every array's chunks tile a unit exactly and the rows of all hooks/layers
of a token are decoded together). An epoch is:

1. the units, in storage order or a permutation seeded by (seed, epoch) (the same on every rank and worker);
2. their selected rows concatenated: the epoch's row sequence S of T rows;
3. S cut into batch *slots* of `batch_size` rows (the last one short); rank r of R owns the K = n_slots // R
   consecutive slots [r*K, (r+1)*K) (at most R-1 slots are dropped, none repeated);
4. slots grouped into *windows* of `window_slots` consecutive slots; a shuffled read permutes the rows of each
   window with a generator seeded by (seed, epoch, window) and deals them to the window's slots in order.

So a batch mixes rows of about `window_slots * batch_size / unit_rows` random units, and memory holds about
three windows (the one being served, the next being decoded, a retired one kept for reuse): a larger buffer mixes
better and costs memory in proportion. Nothing depends on how many processes read. (A sequential read permutes
nothing, so its readers may use other windows: DataLoader workers, which take every N-th batch, use one-slot
windows so that each decodes only the units of its own batches.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import CacheError, InputError
from .index import CommitRecord
from .layout import activation_name

__all__ = ["LoaderSettings", "LoaderSettingsError", "Piece", "TokenPlan", "parse_positions"]


class LoaderSettingsError(InputError):
    """Loader arguments that cannot describe a read (batch size, ranks, positions, buffer)."""


@dataclass(frozen=True)
class LoaderSettings:
    """Everything that decides which rows a training read yields and in what order."""

    hooks: tuple[str, ...]
    layers: tuple[int, ...]
    batch_size: int = 4096
    shuffle: bool = True
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    buffer_tokens: int = 1 << 15  # rows permuted together; memory is about three windows of this many rows
    positions: tuple[int, int | None] = (0, None)  # token positions [start, stop) kept in every document
    epochs: int = 1
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.buffer_tokens < 1 or self.epochs < 1:
            raise LoaderSettingsError("batch_size, buffer_tokens and epochs must be at least 1")
        if not 0 <= self.rank < self.world_size:
            raise LoaderSettingsError(f"rank {self.rank} is not in [0, world_size={self.world_size})")
        start, stop = self.positions
        if start < 0 or (stop is not None and stop <= start and stop >= 0):
            raise LoaderSettingsError(f"positions {self.positions} keep no token: give (k, None) to drop the "
                                      "first k tokens of each document, or a (start, stop) slice")
        if not self.hooks or not self.layers:
            raise LoaderSettingsError("give at least one hook and one layer")

    @property
    def streams(self) -> list[tuple[str, str]]:
        """(batch key `<hook>.<layer>`, array name) of every requested array, hooks outer."""
        return [(f"{h}.{layer}", activation_name(h, layer)) for h in self.hooks for layer in self.layers]

    @property
    def window_slots(self) -> int:
        return max(1, self.buffer_tokens // self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        return {"hooks": list(self.hooks), "layers": list(self.layers), "batch_size": self.batch_size,
                "shuffle": self.shuffle, "seed": self.seed, "rank": self.rank, "world_size": self.world_size,
                "buffer_tokens": self.buffer_tokens, "positions": list(self.positions), "epochs": self.epochs,
                "dtype": self.dtype}


def parse_positions(positions: int | slice | tuple[int, int | None] | None) -> tuple[int, int | None]:
    """`k` (drop the first k tokens of each document), a slice with step 1, or (start, stop)."""
    if positions is None:
        return 0, None
    if isinstance(positions, int):
        return positions, None
    if isinstance(positions, slice):
        if positions.step not in (None, 1):
            raise LoaderSettingsError(f"positions {positions}: only step 1 is supported")
        return positions.start or 0, positions.stop
    start, stop = positions
    return int(start), None if stop is None else int(stop)


@dataclass(frozen=True)
class Piece:
    """Rows `[first, stop)` (ordinals among the unit's selected rows) of one unit, bound for window row `dest`."""

    unit: int
    first: int
    stop: int
    dest: int


@dataclass
class TokenPlan:
    """Units, their selected rows (as per-document intervals) and the epoch/window arithmetic of one loader."""

    settings: LoaderSettings
    records: list[CommitRecord]
    n_selected: int  # T: selected rows per epoch
    digest: str  # of the selection (units, documents, positions): a resumed read must select the same rows
    unit_segment: np.ndarray = field(repr=False)  # [n_units] index into records
    unit_row0: np.ndarray = field(repr=False)  # [n_units] first segment row of the unit
    unit_count: np.ndarray = field(repr=False)  # [n_units] selected rows (every listed unit has some)
    unit_iv: np.ndarray = field(repr=False)  # [n_units, 2] the intervals overlapping the unit: [lo, hi)
    iv_start: np.ndarray = field(repr=False)  # [n_intervals] segment rows [start, stop) one document keeps
    iv_stop: np.ndarray = field(repr=False)
    iv_token: np.ndarray = field(repr=False)  # token_index of each interval's first row
    unit_rows: np.ndarray = field(repr=False)  # [n_records] rows per unit of each segment

    @classmethod
    def build(cls, records: Sequence[CommitRecord], selected: Mapping[str, int], settings: LoaderSettings,
              ) -> TokenPlan:
        """`selected`: key -> token_index of the document's first token, for the documents to read. A key is read
        from its first record only, as `documents()` counts a key committed twice once."""
        start, stop = settings.positions
        seg, row0, count, lo_hi, unit_rows = [], [], [], [], []
        iv_start: list[int] = []
        iv_stop: list[int] = []
        iv_token: list[int] = []
        seen: set[str] = set()
        hasher = hashlib.sha256()
        for s, record in enumerate(records):
            rows = _unit_rows(record, settings)
            unit_rows.append(rows)
            first_iv, row = len(iv_start), 0
            for doc in record.documents:
                if doc.key in selected and doc.key not in seen:
                    a, b, _ = slice(start, stop).indices(doc.n_tokens)
                    if b > a:
                        iv_start.append(row + a)
                        iv_stop.append(row + b)
                        iv_token.append(selected[doc.key] + a)
                        hasher.update(f"{record.unit_id}/{doc.key}/{a}/{b}/{selected[doc.key]};".encode())
                seen.add(doc.key)
                row += doc.n_tokens
            starts = np.asarray(iv_start[first_iv:], dtype=np.int64)
            stops = np.asarray(iv_stop[first_iv:], dtype=np.int64)
            bounds = np.arange(-(-row // rows) + 1, dtype=np.int64) * rows
            counts = np.diff(_selected_before(starts, stops, bounds))
            lo = first_iv + np.searchsorted(stops, bounds[:-1], side="right")  # first interval ending in the unit
            hi = first_iv + np.searchsorted(starts, bounds[1:], side="left")  # past the last one starting in it
            kept = np.flatnonzero(counts)
            seg.append(np.full(len(kept), s))
            row0.append(bounds[kept])
            count.append(counts[kept])
            lo_hi.append(np.stack([lo[kept], hi[kept]], axis=1))
        if not iv_start:
            raise CacheError("the loader selects no token: every selected document is shorter than the first "
                             f"kept position {start}, or no document was selected")
        return cls(settings, list(records), int(sum(int(c.sum()) for c in count)),
                   hasher.hexdigest(), np.concatenate(seg), np.concatenate(row0), np.concatenate(count),
                   np.concatenate(lo_hi), np.asarray(iv_start, np.int64), np.asarray(iv_stop, np.int64),
                   np.asarray(iv_token, np.int64), np.asarray(unit_rows, np.int64))

    # -- the arithmetic of an epoch ------------------------------------------------------------------------------
    @property
    def n_units(self) -> int:
        return len(self.unit_count)

    @property
    def n_slots(self) -> int:
        """Batches of the whole epoch, before the split into ranks."""
        return -(-self.n_selected // self.settings.batch_size)

    @property
    def batches_per_rank(self) -> int:
        """K: every rank gets exactly this many batches per epoch."""
        return self.n_slots // self.settings.world_size

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(unit order, row offsets [n_units + 1] of each unit in the epoch's row sequence S)."""
        if self.settings.shuffle:
            order = np.random.default_rng([self.settings.seed, epoch]).permutation(self.n_units)
        else:
            order = np.arange(self.n_units)
        return order, np.concatenate([[0], np.cumsum(self.unit_count[order])])

    def slot_of(self, step: int) -> tuple[int, int]:
        """(epoch, global slot) of this rank's batch number `step` (counted over all epochs)."""
        per_rank = self.batches_per_rank
        epoch, i = divmod(step, per_rank)
        return epoch, self.settings.rank * per_rank + i

    def window_rows(self, window: int, slots: int) -> tuple[int, int]:
        """Rows [start, stop) of S that window `window` of `slots` slots holds."""
        rows = slots * self.settings.batch_size
        return window * rows, min((window + 1) * rows, self.n_selected)

    def window_pieces(self, offsets: np.ndarray, order: np.ndarray, window: int, slots: int) -> list[Piece]:
        """The units (and which of their selected rows) that fill a window, in S order."""
        s0, s1 = self.window_rows(window, slots)
        first = int(np.searchsorted(offsets, s0, side="right")) - 1
        last = int(np.searchsorted(offsets, s1, side="left"))
        pieces = []
        for position in range(first, last):
            u0, u1 = int(offsets[position]), int(offsets[position + 1])
            a, b = max(s0, u0), min(s1, u1)
            pieces.append(Piece(int(order[position]), a - u0, b - u0, a - s0))
        return pieces

    def window_permutation(self, epoch: int, window: int) -> np.ndarray | None:
        """Row order of a window (None: storage order)."""
        if not self.settings.shuffle:
            return None
        s0, s1 = self.window_rows(window, self.settings.window_slots)
        return np.random.default_rng([self.settings.seed, epoch, window]).permutation(s1 - s0)

    def unit_runs(self, unit: int, first: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(segment rows [start, stop) of each contiguous run, token_index of each run's first row) for the
        selected rows with ordinals [first, stop) of a unit."""
        lo, hi = self.unit_iv[unit]
        r0 = self.unit_row0[unit]
        r1 = r0 + self.unit_rows[self.unit_segment[unit]]
        starts = np.maximum(self.iv_start[lo:hi], r0)
        stops = np.minimum(self.iv_stop[lo:hi], r1)
        tokens = self.iv_token[lo:hi] + (starts - self.iv_start[lo:hi])
        if first == 0 and stop == self.unit_count[unit]:  # a whole unit (most pieces): nothing to cut
            return starts, stops, tokens
        ends = np.cumsum(stops - starts)  # ordinal just past each run
        begins = ends - (stops - starts)
        keep = (ends > first) & (begins < stop)
        cut_front = np.maximum(first - begins, 0)[keep]
        cut_back = np.maximum(ends - stop, 0)[keep]
        starts, stops, tokens = starts[keep] + cut_front, stops[keep] - cut_back, tokens[keep] + cut_front
        return starts, stops, tokens


def _selected_before(starts: np.ndarray, stops: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Selected rows below each bound, for sorted disjoint intervals [starts, stops)."""
    if not len(starts):
        return np.zeros(len(bounds), dtype=np.int64)
    lengths = stops - starts
    done = np.concatenate([[0], np.cumsum(lengths)])  # rows of the intervals before interval i
    i = np.searchsorted(starts, bounds, side="right") - 1  # last interval starting at or before each bound
    j = np.maximum(i, 0)
    return np.where(i >= 0, done[j] + np.clip(bounds - starts[j], 0, lengths[j]), 0)


def _unit_rows(record: CommitRecord, settings: LoaderSettings) -> int:
    """Rows per unit of a segment: the tallest chunk among the requested arrays (every other one divides it)."""
    heights = []
    for _, name in settings.streams:
        manifest = record.arrays.get(name)
        if manifest is None:
            raise CacheError(f"unit {record.unit_id} has no array {name} in its commit record: run `actcache "
                             "verify` on the cache")
        heights.append(manifest.chunk_rows)
    tallest = max(heights)
    if any(tallest % h for h in heights):
        raise CacheError(f"unit {record.unit_id}: chunk heights {heights} do not tile each other; this cache was "
                         "not written by actcache")
    return tallest
