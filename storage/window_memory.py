"""Window memory a DataLoader worker shares with the main process, and the batches it hands out from it (Linux).

A worker decodes a window into a memfd. A batch travels through the DataLoader's queue as (worker pid, fd number,
inode, offsets): the main process opens the memfd through /proc/<pid>/fd and maps it, so nothing is copied and no
file descriptor is passed per batch. torch's own sharing sends every storage's descriptor through a new
authenticated socket connection to the worker: a handful of cross-process wake-ups per batch, which cost a 2-worker
sequential read 5-19% of its throughput per CPU second on this 2-vCPU machine (interleaved side-by-side runs).

The main process writes a batch's generation number into the window's `released` flags (in the memfd too) once
the batch and every view of it are gone; the worker reuses a window only when every batch it handed out is
released, so a batch the caller keeps is never overwritten, and keeps the memfd open until then (`Drain`), so that
a batch still queued always finds the memory it names. Without memfd (not Linux) `SHARABLE` is false and workers
hand out plain tensors, which torch copies into its own shared memory.
"""

from __future__ import annotations

import itertools
import mmap
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from multiprocessing.reduction import ForkingPickler
from typing import Any

import numpy as np
import torch

from .errors import CacheError

__all__ = ["SHARABLE", "Batch", "WindowMemory", "Drain"]

SHARABLE = hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")
_ALIGN = 64  # bytes: every array starts on a cache line

Batch = dict[str, torch.Tensor]


class WindowMemory:
    """One window's arrays (C order) and its batches' `released` flags, in one memfd the main process can map."""

    def __init__(self, specs: Sequence[tuple[tuple[int, ...], np.dtype]], slots: int) -> None:
        sizes = [int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in specs] + [slots * 8]
        starts = np.cumsum([0] + [-(-n // _ALIGN) * _ALIGN for n in sizes]).tolist()
        self.size = int(starts[-1])
        self.fd = os.memfd_create("actcache-window", os.MFD_CLOEXEC)
        weakref.finalize(self, os.close, self.fd)
        os.ftruncate(self.fd, self.size)
        self.inode = os.fstat(self.fd).st_ino
        memory = mmap.mmap(self.fd, self.size)
        self.arrays = [np.frombuffer(memory, dtype, int(np.prod(shape)), start).reshape(shape)
                       for (shape, dtype), start in zip(specs, starts, strict=False)]
        self.released_at = int(starts[-2])
        self.released = np.frombuffer(memory, np.int64, slots, self.released_at)
        self.released.fill(-1)
        self._base = self.released.ctypes.data - self.released_at
        self.issued: dict[int, int] = {}  # batch slot -> generation handed out
        self._generations = itertools.count()

    def hand_out(self, batch: Batch, slot: int) -> Batch:
        """`batch` (contiguous views of this memory), to be sent to the main process as batch `slot` of the
        window."""
        generation = next(self._generations)
        self.issued[slot] = generation
        out = _HandedOut(batch)
        out.origin = (self, slot, generation)
        return out

    def all_released(self) -> bool:
        return all(int(self.released[slot]) == generation for slot, generation in self.issued.items())

    def reuse(self) -> None:
        """Start handing out batches of a new window."""
        self.issued.clear()

    def offset_of(self, tensor: torch.Tensor) -> int | None:
        """Where a contiguous tensor's data lies in this memory, or None if it lies elsewhere."""
        offset = tensor.data_ptr() - self._base
        inside = 0 <= offset and offset + tensor.nbytes <= self.size
        return offset if inside and tensor.is_contiguous() else None


class Drain:
    """Window memory a worker no longer reuses, kept open until the main process has released its batches."""

    def __init__(self) -> None:
        self._memory: list[WindowMemory] = []

    def add(self, memory: WindowMemory) -> None:
        """Keep `memory` while the main process may still map it; let go of what it has released since."""
        self._memory = [m for m in (*self._memory, memory) if not m.all_released()]


class _HandedOut(dict):  # type: ignore[type-arg]
    """A worker's batch; the DataLoader's pickler (ForkingPickler) sends it with `_send_batch`."""

    origin: tuple[WindowMemory, int, int]


def _send_batch(batch: _HandedOut) -> tuple[Callable[..., Batch], tuple[Any, ...]]:
    memory, slot, generation = batch.origin
    parts = {}
    for key, tensor in batch.items():
        offset = memory.offset_of(tensor)
        assert offset is not None, f"{key} is not a view of its window memory"  # batches slice a window's arrays
        parts[key] = (offset, tuple(tensor.shape), tensor.dtype)
    return _receive_batch, (os.getpid(), memory.fd, memory.inode, memory.size, memory.released_at,
                            len(memory.released), slot, generation, parts)


ForkingPickler.register(_HandedOut, _send_batch)


def _map_worker_memory(pid: int, fd: int, inode: int, size: int) -> mmap.mmap:
    try:
        own = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
    except OSError as error:
        raise CacheError(f"cannot map the window memory of DataLoader worker {pid} ({error}): read with "
                         "num_workers=0 (the loader decodes on its own threads)") from None
    try:
        if os.fstat(own).st_ino != inode:  # the worker keeps the memfd open while a batch of it is unreleased
            raise CacheError(f"DataLoader worker {pid} closed the window memory of a batch still queued: this is "
                             "a bug in actcache; read with num_workers=0 meanwhile")
        return mmap.mmap(own, size)
    finally:
        os.close(own)


def _receive_batch(pid: int, fd: int, inode: int, size: int, released_at: int, slots: int, slot: int,
                   generation: int, parts: dict[str, tuple[int, tuple[int, ...], torch.dtype]]) -> Batch:
    """(main process) A worker's batch: tensors over its window memory that write `generation` into the window's
    `released[slot]` once the last view of any of them is gone (a tensor made by `torch.from_numpy` keeps its
    array, the one watched, alive; every view of it shares that array)."""
    memory = _map_worker_memory(pid, fd, inode, size)
    flags = np.frombuffer(memory, np.int64, slots, released_at)
    pending, lock = [len(parts)], threading.Lock()

    def release() -> None:
        with lock:
            pending[0] -= 1
            if pending[0] == 0:
                flags[slot] = generation

    batch = {}
    for key, (offset, shape, dtype) in parts.items():
        raw = np.frombuffer(memory, np.uint8, int(np.prod(shape)) * dtype.itemsize, offset)
        weakref.finalize(raw, release).atexit = False
        batch[key] = torch.from_numpy(raw).view(dtype).view(shape)
    return batch
