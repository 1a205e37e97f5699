"""Training reads: shuffled, resumable, rank-sharded token batches of several hooks/layers (`CacheReader.tokens`).

The order is pure arithmetic on a pinned list of committed units (token_plan.py): it depends on the seed, the epoch,
the rank split and the batch and buffer sizes, never on how many threads or DataLoader workers read. Decoding runs
on a thread pool kept across iterations (object reads, zstd and the byte unshuffle all release the GIL), one window
ahead of the batches being served; memory stays near three windows (`buffer_tokens` rows each: served, decoding, and
the previous one, which the caller's last batch still views) whatever the cache size. Window memory is reused, by
the next window and by the dataset's next iteration (epoch): the kernel zeroes a fresh page in about the time
decoding fills it. A window that a batch the caller still holds views is never reused (it costs a fresh one
instead). DataLoader workers take turns on a sequential read; a shuffled one is served by worker 0 alone (see
__iter__). A worker decodes into shared memory that the main process maps without a copy, and reuses a window's
buffer once the main process has let go of every batch (and view of one) from it (window_memory.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import zarr
from torch.utils.data import IterableDataset, get_worker_info

from .chunk_codec import ChunkDecoder
from .dtypes import storage_dtype, to_torch, widen_to_float32
from .errors import CacheError, CorruptCacheError
from .index import CommitRecord
from .layout import parse_activation_name, segment_path
from .lossy import decode, side_names
from .pooled import select_documents
from .token_plan import LoaderSettings, LoaderSettingsError, Piece, TokenPlan
from .window_memory import SHARABLE, Batch, Drain, WindowMemory

if TYPE_CHECKING:
    from .backends import StorageBackend
    from .pooled import Where
    from .reader import Document

__all__ = ["TokenDataset", "STATE_VERSION"]

STATE_VERSION = 1
MAX_DEFAULT_THREADS = 8
# retired window buffers kept for reuse, by this and later iterations (_WindowReader._buffers): three, as a read
# rotates three (served, decoding, and the previous one, which the caller's last batch still views); with two, every
# new iteration (epoch) found only the pinned one and faulted in a fresh window
SPARE_WINDOWS = 3
SPARE_BATCHES = 8  # ... or as many batches' worth, if more: a worker's one-batch windows wait in the DataLoader's queue


class TokenDataset(IterableDataset[Batch]):
    """Batches `{"<hook>.<layer>": [B, width], "token_index": [B] int64}`; see `CacheReader.tokens`.

    Stateful in torchdata's sense: `state_dict()` after k batches and `load_state_dict()` on a fresh loader
    continue with batch k+1 of the same run, in-process or per DataLoader worker (`StatefulDataLoader`).
    """

    def __init__(self, backend: StorageBackend, cache_dtype: str, widths: dict[str, int],
                 records: Sequence[CommitRecord], documents: Sequence[Document], settings: LoaderSettings,
                 where: Where | None = None, threads: int | None = None, *, store_as: str = "exact",
                 outliers: int = 0) -> None:
        super().__init__()
        self.backend = backend  # the cache's store: chunks are read through it (a disk or s3://)
        self.settings = settings
        self.threads = threads
        self._cache_dtype = cache_dtype  # the dtype rows are held in: the stored one, float32 for scaled codes
        # bf16/fp16 rows read as float32 are widened as they are decoded, on the decoding threads, into float32
        # windows: widening each batch on the reading thread cost a fresh array per batch, and a DataLoader
        # worker's batch then left its shared memory (torch copied it): 3.7x slower with 2 workers
        self._widen = settings.dtype == "float32" and cache_dtype != "float32"
        self.store_as = store_as  # fp8/int8: chunks hold codes, decoded with their side arrays (storage/lossy.py)
        self.outliers = outliers  # fp8/int8: the cache's `capture.outliers`, which names those side arrays
        self._widths = {key: widths[name.split("/")[0]] for key, name in settings.streams}
        self._records = list(records)  # every committed unit of the reader: a state may pin a subset
        self._documents = {d.key: d for d in documents}
        self._where = where
        self.plan = self._plan(self._records)
        if self.plan.batches_per_rank == 0:
            raise LoaderSettingsError(f"{self.plan.n_selected} selected tokens make {self.plan.n_slots} batch(es) "
                                      f"of {settings.batch_size}, fewer than world_size={settings.world_size}: "
                                      "use a smaller batch_size")
        self._step = 0  # the next batch of this reader's stream (counted over all epochs)
        self._stride = 1  # how many readers share the stream (DataLoader workers) when `_step` was recorded
        self._spare: list[_Buffers] = []  # retired windows' buffers: the next window and the next epoch reuse them
        self._drain = Drain()  # a worker's window memory no longer reused, open while the main process needs it
        self._decoders: dict[str, ChunkDecoder] = {}  # by array key: opening an array costs more than a chunk
        self._pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, threads, decoding threads)

    def __getstate__(self) -> dict[str, Any]:
        """A pickled copy (a DataLoader worker started by spawn) leaves the spare buffers, the decoders and the
        decoding threads behind."""
        return {**self.__dict__, "_spare": [], "_drain": Drain(), "_decoders": {}, "_pool": None}

    def _decoding_pool(self, threads: int, worker: bool) -> Executor:
        """The decoding threads, kept across iterations (epochs): a new thread faults in fresh scratch buffers
        (chunk_codec.py), ~4 MB each, which cost this machine ~4% of an epoch. A forked process (a DataLoader
        worker) inherits the pool but not its threads, so it makes its own. A DataLoader worker with one thread
        decodes on its own thread, when a batch is asked for: the DataLoader already keeps every worker busy
        with batches asked for ahead, and a second thread only adds hand-offs (~4% of a 2-worker read here)."""
        if worker and threads == 1:
            return _InlineExecutor()
        if self._pool is not None:
            pid, size, pool = self._pool
            if pid == os.getpid() and size == threads:
                return pool
            if pid == os.getpid():
                pool.shutdown(wait=False)
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="actcache-tokens")
        self._pool = (os.getpid(), threads, pool)
        return pool

    def _plan(self, records: Sequence[CommitRecord]) -> TokenPlan:
        """Documents of `records` in `documents()` order (a key committed twice counts once), then the selection."""
        docs, token_start, first = [], {}, 0
        for record in records:
            for doc in record.documents:
                if doc.key not in token_start:
                    token_start[doc.key] = first
                    docs.append(self._documents[doc.key])
                    first += doc.n_tokens
        chosen = select_documents(docs, self._where)
        return TokenPlan.build(records, {d.key: token_start[d.key] for d in chosen}, self.settings)

    def __len__(self) -> int:
        """Batches this rank yields over all epochs."""
        return self.plan.batches_per_rank * self.settings.epochs

    # -- resumption -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where this reader is, and the exact snapshot (committed units, selection) it reads."""
        return {"version": STATE_VERSION, "settings": self.settings.to_dict(),
                "units": [r.unit_id for r in self.plan.records], "selection": self.plan.digest,
                "step": self._step, "stride": self._stride}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a run: the same units as when the state was taken (units committed since are ignored)."""
        if state.get("version") != STATE_VERSION:
            raise CacheError(f"loader state version {state.get('version')} is not {STATE_VERSION}: start a new run")
        mine = self.settings.to_dict()
        theirs = dict(state["settings"])
        changed = [k for k in mine if k != "epochs" and mine[k] != theirs.get(k)]
        if changed:
            shown = "; ".join(f"{k} (state: {theirs.get(k)}, now: {mine[k]})" for k in changed)
            raise CacheError(f"the loader state was taken with different settings: {shown}: open tokens() with "
                             "the settings of the run you resume")
        if state["units"] != [r.unit_id for r in self.plan.records]:
            by_id = {r.unit_id: r for r in self._records}
            lost = [u for u in state["units"] if u not in by_id]
            if lost:
                raise CacheError(f"{len(lost)} unit(s) the run read are no longer committed in {self.backend.url} "
                                 f"(e.g. {lost[0]}): resume on the cache the run started on")
            self.plan = self._plan([by_id[u] for u in state["units"]])
        if self.plan.digest != state["selection"]:
            raise CacheError("the documents this run selects changed since the state was taken (labels relabelled, "
                             "or a different `where`): open the cache at the annotation version the run started "
                             "with (open_cache(path, annotations=N))")
        self._step, self._stride = int(state["step"]), int(state["stride"])

    # -- iteration ------------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.settings.shuffle and workers > 1:
            # every batch of a window draws rows from all of its units: N workers taking turns would each decode
            # every window, so worker 0 serves all batches (its threads decode in parallel) and the rest stop
            if worker > 0:
                return iter(())
            worker, workers = 0, 1
        # a worker's own saved position resumes as is; a whole-stream position is shared out among the workers
        start = self._step if workers > 1 and self._stride == workers else self._step + worker
        if start >= len(self):
            start = worker  # a finished run starts over
        threads = self.threads or max(1, min(MAX_DEFAULT_THREADS, os.cpu_count() or 1) // workers)
        return self._batches(start, workers, threads, worker=info is not None)

    def _batches(self, start: int, stride: int, threads: int, worker: bool) -> Iterator[Batch]:
        plan = self.plan
        # a sequential read permutes nothing: workers taking turns decode only the units of their own batches
        slots = self.settings.window_slots if self.settings.shuffle or stride == 1 else 1
        reader = _WindowReader(self, threads, slots, worker)
        try:
            for step in range(start, len(self), stride):
                epoch, slot = plan.slot_of(step)
                window = reader.window(epoch, slot // slots)
                ahead = self._next_window(step, stride, slots) if reader.ahead else None
                if ahead is not None:
                    reader.prefetch(*ahead)
                batch = window.batch(slot % slots)
                self._step, self._stride = step + stride, stride
                yield batch
        finally:
            reader.close()

    def _next_window(self, step: int, stride: int, slots: int) -> tuple[int, int] | None:
        """(epoch, window) of this reader's first batch past the window of `step`, if any."""
        plan = self.plan
        epoch, slot = plan.slot_of(step)
        per_rank, first_slot = plan.batches_per_rank, self.settings.rank * plan.batches_per_rank
        last_in_window = epoch * per_rank + min((slot // slots + 1) * slots - 1 - first_slot, per_rank - 1)
        following = step + stride * (-(-(last_in_window + 1 - step) // stride))
        if following >= len(self):
            return None
        epoch, slot = plan.slot_of(following)
        return epoch, slot // slots

    def batch_tensors(self, rows: dict[str, np.ndarray], tokens: np.ndarray) -> Batch:
        """Window rows (already widened to float32, or the stored bits) -> tensors over the same memory."""
        out: Batch = {key: torch.from_numpy(values) if self._widen else to_torch(values, self._cache_dtype)
                      for key, values in rows.items()}
        out["token_index"] = torch.from_numpy(tokens)
        return out


class _InlineExecutor(Executor):
    """Runs each task when it is submitted, on the calling thread (a DataLoader worker's one decoding thread)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:  # noqa: BLE001 - kept in the future, raised where its result is asked for
            future.set_exception(error)
        return future


@dataclass(frozen=True)
class _Buffers:
    """A window's memory: one array per stream, then token_index; `shared` (DataLoader workers only): the memory
    they lie in, which the main process maps, and which of its batches it may still hold."""

    arrays: list[np.ndarray]
    shared: WindowMemory | None = None


class _Window:
    """One window's rows, filled by decoding tasks on the pool straight into their shuffled places, so that a
    batch is a plain slice (a view: a batch kept alive keeps its window's buffers from being reused)."""

    def __init__(self, owner: TokenDataset, epoch: int, window: int, slots: int, buffers: _Buffers,
                 order: tuple[np.ndarray, np.ndarray], fill: Callable[[_Window, Piece], None],
                 pool: Executor) -> None:
        plan = owner.plan
        s0, s1 = plan.window_rows(window, slots)
        self.owner = owner
        self.buffers = buffers  # whole-window size: this window uses a prefix of each
        self.rows = {key: array[:s1 - s0] for (key, _), array in zip(owner.settings.streams, buffers.arrays,
                                                                     strict=False)}
        self.tokens = buffers.arrays[-1][:s1 - s0]
        permutation = plan.window_permutation(epoch, window)  # batch position -> window row (S order)
        self.place: np.ndarray | None = None  # window row -> batch position
        if permutation is not None:
            self.place = np.empty_like(permutation)
            self.place[permutation] = np.arange(len(permutation))
        self.pending: list[Future[None]] = [pool.submit(fill, self, piece)
                                            for piece in plan.window_pieces(order[1], order[0], window, slots)]

    def batch(self, local_slot: int) -> Batch:
        """Batch `local_slot` of the window: views of its buffers (in shared memory for a DataLoader worker, so
        that handing a batch to the main process copies nothing, unless rows are widened to float32)."""
        if self.pending:
            wait(self.pending)  # one wake-up for the window, not one per task
            for future in self.pending:
                future.result()  # re-raises a decoding error (missing chunk, bad checksum) in the reading thread
            self.pending = []
        size = self.owner.settings.batch_size
        lo, hi = local_slot * size, min((local_slot + 1) * size, len(self.tokens))
        batch = self.owner.batch_tensors({key: values[lo:hi] for key, values in self.rows.items()},
                                         self.tokens[lo:hi])
        memory = self.buffers.shared
        return batch if memory is None else memory.hand_out(batch, local_slot)

    def cancel(self) -> None:
        for future in self.pending:
            future.cancel()


class _WindowReader:
    """The windows one reader holds (the current one and the next), the decoders and the decoding threads."""

    def __init__(self, owner: TokenDataset, threads: int, slots: int, worker: bool) -> None:
        self.owner = owner
        self.slots = slots
        self.shared = worker and SHARABLE  # decode into memory the main process maps (window_memory.py)
        self.pool = owner._decoding_pool(threads, worker=worker)
        self.ahead = not isinstance(self.pool, _InlineExecutor)  # decode the next window while this one is served
        self.windows: dict[tuple[int, int], _Window] = {}
        self.orders: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.decoders: dict[int, dict[str, tuple[ChunkDecoder, list[ChunkDecoder]]]] = {}  # by segment

    def window(self, epoch: int, window: int) -> _Window:
        """The window, decoded or decoding; older windows are retired."""
        key = (epoch, window)
        if key not in self.windows:
            self.prefetch(epoch, window)
        for old in [k for k in self.windows if k < key]:
            self._retire(self.windows.pop(old))
        return self.windows[key]

    def _retire(self, window: _Window) -> None:
        window.cancel()
        kept = max(SPARE_WINDOWS, -(-SPARE_BATCHES // self.slots))
        spare = [window.buffers, *self.owner._spare]
        self.owner._spare[:] = spare[:kept]
        for dropped in spare[kept:]:
            if dropped.shared is not None:
                self.owner._drain.add(dropped.shared)

    def _buffers(self) -> _Buffers:
        """Buffers for a window: a retired window's once no batch views them any more, else fresh ones.

        Fresh pages cost the kernel about as much time to zero as decoding takes to fill them (measured: 0.7-2.8
        ms per MB here, the higher figure when it compacts memory for huge pages), so buffers are reused, across
        iterations too (the dataset keeps them); one that a batch the caller still holds views (its refcount says
        so) is left alone. A DataLoader worker's buffers are shared memory, reused once the main process has
        released every batch handed out from them (window_memory.py).
        """
        rows = self.slots * self.owner.settings.batch_size
        for i, spare in enumerate(self.owner._spare):
            # a forked worker inherits its parent's spare buffers, which the main process cannot map
            if len(spare.arrays[-1]) == rows and (spare.shared is not None) == self.shared and (
                    # references: the list, `b` and getrefcount's argument; none from a batch the caller still holds
                    all(sys.getrefcount(b) <= 3 for b in spare.arrays) if spare.shared is None
                    else spare.shared.all_released()):
                if spare.shared is not None:
                    spare.shared.reuse()
                return self.owner._spare.pop(i)
        held = np.dtype(np.float32) if self.owner._widen else storage_dtype(self.owner._cache_dtype)
        specs = [((rows, self.owner._widths[key]), held)
                 for key, _ in self.owner.settings.streams] + [((rows,), np.dtype(np.int64))]
        if not self.shared:
            return _Buffers([np.empty(shape, dtype) for shape, dtype in specs])
        memory = WindowMemory(specs, self.slots)
        return _Buffers(memory.arrays, memory)

    def prefetch(self, epoch: int, window: int) -> None:
        if (epoch, window) in self.windows:
            return
        if epoch not in self.orders:
            self.orders = {e: o for e, o in self.orders.items() if e >= epoch - 1}
            self.orders[epoch] = self.owner.plan.epoch_order(epoch)
        order = self.orders[epoch]
        plan = self.owner.plan
        for piece in plan.window_pieces(order[1], order[0], window, self.slots):  # open arrays here, not on the pool
            self._decoders_of(int(plan.unit_segment[piece.unit]))
        self.windows[(epoch, window)] = _Window(self.owner, epoch, window, self.slots, self._buffers(), order,
                                                self._fill, self.pool)

    def _decoders_of(self, segment: int) -> dict[str, tuple[ChunkDecoder, list[ChunkDecoder]]]:
        """Per stream: the decoder of its chunks, and of its side arrays (scales and outliers of fp8/int8 codes);
        made once per segment by `prefetch` on the reading thread, looked up by the pool's tasks."""
        decoders = self.decoders.get(segment)
        if decoders is None:
            owner = self.owner
            decoders = self.decoders[segment] = {
                key: (self._decoder(segment, name),
                      [self._decoder(segment, side) for side in
                       side_names(*parse_activation_name(name), owner.store_as, owner.outliers)])
                for key, name in owner.settings.streams}
        return decoders

    def _decoder(self, segment: int, name: str) -> ChunkDecoder:
        """One array's decoder, kept by the dataset: zarr opens an array in more time than a few of its chunks
        decode in (~7% of an epoch of the loader benchmark when every iteration opened its arrays again)."""
        key = f"{segment_path(self.owner.plan.records[segment].segment)}/{name}"
        decoder = self.owner._decoders.get(key)
        if decoder is None:
            array = zarr.open_array(self.owner.backend.zarr_store(), path=key, mode="r")
            decoder = self.owner._decoders[key] = ChunkDecoder(array, self.owner.backend, key)
        return decoder

    def _fill(self, window: _Window, piece: Piece) -> None:
        """Decode one unit's chunks once and put its selected rows of `piece` in their window places (a pool task)."""
        plan = self.owner.plan
        segment = int(plan.unit_segment[piece.unit])
        starts, stops, tokens = plan.unit_runs(piece.unit, piece.first, piece.stop)
        lengths = stops - starts
        begins = np.cumsum(lengths) - lengths  # each run's first row among the piece's rows (S order)
        dest, count = piece.dest, piece.stop - piece.first
        place = window.place
        widen = self.owner._cache_dtype if self.owner._widen else None  # rows are held as float32
        # every run counts up from its first token
        window.tokens[slice(dest, dest + count) if place is None else place[dest:dest + count]] = (
            np.arange(count) + np.repeat(tokens - begins, lengths))
        spans: dict[int, list[_ChunkSpan]] = {}  # by chunk height: arrays of one height share the arithmetic
        for key, (decoder, side_decoders) in self.decoders[segment].items():
            rows, out = decoder.chunk_rows, window.rows[key]
            if rows not in spans:
                spans[rows] = _chunk_spans(starts, stops, dest + begins, rows)
            for chunk, first, span, at, n, lo, hi in spans[rows]:
                try:
                    sides = [side.rows(chunk) for side in side_decoders]  # first: planes() reuses a buffer
                    planes = decoder.planes(chunk)
                except CorruptCacheError as error:
                    documents = _documents_at(plan.records[segment], chunk * rows, (chunk + 1) * rows)
                    raise CorruptCacheError(f"{error} (documents {documents})") from None
                if place is None and not sides and n == span:  # straight into the window
                    if widen is None:
                        decoder.unshuffle(planes, first, first + span, out[at:at + n])
                    else:
                        widen_to_float32(decoder.unshuffle_staged(planes, first, first + span), widen,
                                         out=out[at:at + n])
                    continue
                # decode the runs' span once, keep their rows (lossy codes decoded), put them in their places
                values = decoder.unshuffle_staged(planes, first, first + span)
                kept = np.arange(first, first + span) if n == span else np.concatenate(
                    [np.arange(a, b) for a, b in zip(lo.tolist(), hi.tolist(), strict=True)])
                if n != span:
                    values = values[kept - first]
                if sides:
                    values = decode(values, [side[kept] for side in sides], self.owner.store_as)
                if widen is not None:
                    values = widen_to_float32(values, widen)
                out[slice(at, at + n) if place is None else place[at:at + n]] = values

    def close(self) -> None:
        for window in self.windows.values():
            window.cancel()
        # tasks already running still write into their windows: wait for them before the buffers are reused
        wait([future for window in self.windows.values() for future in window.pending])
        for window in self.windows.values():
            self._retire(window)
        self.windows.clear()


_ChunkSpan = tuple[int, int, int, int, int, np.ndarray, np.ndarray]


def _chunk_spans(starts: np.ndarray, stops: np.ndarray, dests: np.ndarray, rows: int) -> list[_ChunkSpan]:
    """For each chunk of `rows` rows under the segment-row runs [starts, stops): (chunk, first, span, at, n, lo, hi):
    the runs lie in its rows [first, first + span), `n` of them kept, bound for the window rows [at, at + n)
    (consecutive in S); `lo`, `hi`: the chunk rows of each run."""
    first, last = int(starts[0]) // rows, (int(stops[-1]) - 1) // rows
    if first == last:  # the runs lie in one chunk (arrays as tall as the unit: the usual case)
        c0 = first * rows
        return [(first, int(starts[0]) - c0, int(stops[-1] - starts[0]), int(dests[0]), int((stops - starts).sum()),
                 starts - c0, stops - c0)]
    out = []
    for chunk in range(first, last + 1):
        c0, c1 = chunk * rows, (chunk + 1) * rows
        hit = np.flatnonzero((starts < c1) & (stops > c0))
        if len(hit):
            lo, hi = np.maximum(starts[hit], c0) - c0, np.minimum(stops[hit], c1) - c0
            out.append((chunk, int(lo[0]), int(hi[-1] - lo[0]), int(dests[hit[0]] + c0 + lo[0] - starts[hit[0]]),
                        int((hi - lo).sum()), lo, hi))
    return out


def _documents_at(record: CommitRecord, start: int, stop: int) -> str:
    """'key (source)' of the first documents of a unit with rows in [start, stop)."""
    names, first = [], 0
    for doc in record.documents:
        if first < stop and first + doc.n_tokens > start:
            names.append(f"{doc.key} ({doc.meta.get('source', 'no source')})")
        first += doc.n_tokens
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
