"""The memory budget of a solve (`--max-memory`): parsed once, then split between the cache stream, the
per-document workspace, the streaming accumulators and the subspace totals before any data is read.

The budget covers what a solve holds, not the interpreters: Python, torch, zarr and the loaded libraries
take about 310 MB per process (the driver and each Ray worker) whatever the cache size. The work buffers
BLAS/LAPACK touch once kernels run at real sizes are counted (`RUNTIME_WORKSPACE`). With Ray workers, a task
holds its inputs in the object store, a copy in its worker and its workspace, and a worker keeps most of that
resident after the task (the object-store pages it mapped, its allocator's arenas): Ray may give successive
tasks to different workers, so every worker is counted with one task's memory (measured: a worker that ran
tasks stays up to 150 MB above its start for 96 MB tasks). Checked in tests/solvers/test_job_memory.py (peak
RSS of the driver and every Ray process together).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from actcache.solvers.errors import SolverInputError

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "kib": 2**10, "mib": 2**20, "gib": 2**30}
MAX_STREAM_BLOCK = 64 << 20  # the reader's default block: more buys nothing
MIN_STREAM_BLOCK = 1 << 20
# BLAS/LAPACK buffers touched by the first large gemm, SVD and eigh (measured 15-20 MB resident, one
# thread) and zarr's per-stream buffers: fixed, whatever the cache size, but part of what a solve holds
RUNTIME_WORKSPACE = 24 << 20
# What each Ray worker maps and touches the first time it decomposes, beyond its tasks' data: scipy.linalg and
# its LAPACK (measured: 18.6 MB resident for the import, ~10 MB more for the first d = 1024 eigh's buffers),
# and what a worker keeps beyond one task's bytes after running several (measured: up to 53 MB at d = 1024)
WORKER_RUNTIME = 64 << 20
STREAM_COPIES = 4  # the reader's window while it is extended, chunk buffers, the widened rows (measured 3.7x)
SVD_COPIES = 6  # in float32 matrices: rows, float64 copy (2), centred, SVD factors, LAPACK workspace


def parse_bytes(text: str) -> int:
    """'200MB', '1.5GiB', '500k' or a plain number of bytes -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if match is None or match.group(2).lower() not in _UNITS:
        raise SolverInputError(f"bad memory size {text!r}: use e.g. 200MB, 1.5GiB or a number of bytes")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_bytes(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


@dataclass(frozen=True)
class MemoryPlan:
    """How one layer's pass spends the budget (bytes); `subspace` is what the projector totals may use,
    `task` what each Ray worker may hold for one task."""

    budget: int | None
    stream_block: int
    document: int
    accumulators: int
    eigen: int
    subspace: int
    task: int = 0

    def to_dict(self) -> dict[str, int | None]:
        return {k: getattr(self, k) for k in ("budget", "stream_block", "document", "accumulators", "eigen",
                                               "subspace", "task")}


def ray_task_bytes(width: int, *, subspace: bool, pair_rows: int) -> int:
    """What one Ray task holds beyond the driver's own accounting: an eigen task's T_c in the object store
    (counted twice: the driver that wrote it and the worker that reads it both map its pages), its worker's
    copies of T and T_c (each briefly twice while unpickled), M_pos - M_base, the eigenvectors and the LAPACK
    workspace: 12 d x d float64 (measured: a worker's peak rose by 91 MB = 11.4 squares at d = 1024); an
    aggregator task's paired samples in the store and in the worker, and the fit's float64 copies:
    16 x rows x d float32 for the largest concept's `pair_rows`."""
    eigen_task = 12 * width * width * 8 if subspace else 0
    return max(eigen_task, 16 * pair_rows * width * 4)


def plan_memory(
    budget: int | None, *, width: int, longest_document: int, accumulators: int, subspace: bool, kept: int = 0,
    workers: int = 1, task: int = 0,
) -> MemoryPlan:
    """Split `budget` for one (hook, layer) pass of `width` columns.

    `accumulators` is `PassPlan.memory_bytes` without the subspace totals, `kept` what outlives the pass
    (vectors of finished layers). Fixed parts: the library workspace, the stream (about `STREAM_COPIES`
    blocks; the block is a twentieth of the budget), one document's matrices, the eigen-decomposition and
    projector flush temporaries, and T, which later subspace batches keep beside their own totals. With
    `workers` > 1, each worker holds its libraries (`WORKER_RUNTIME`) and one task's `task` bytes
    (`ray_task_bytes`: kept after the task, and Ray may spread tasks over every worker), and T sits once more in
    the object store; every worker may then run a task at once. The rest is for the subspace
    totals (`subspace`, handed to `subspace_batches`). A budget that the fixed parts already exceed is an error
    naming the smallest budget that works.
    """
    document = (SVD_COPIES if subspace else 2) * longest_document * width * 4  # float32 rows and what they cost
    square = width * width * 8
    ray = workers > 1
    task = task if ray else 0
    # eigh in this process (with Ray it runs in the tasks): M_pos, M_base, their difference, eigenvectors; a
    # flush: the (d, 1024) buffer and its Gram in float32 and float64; T kept through later subspace batches
    eigen = ((0 if ray else 4 * square) + 2 * width * 1024 * 4 + 3 * square // 2 + square) if subspace else 0
    if budget is None:
        return MemoryPlan(None, MAX_STREAM_BLOCK, document, accumulators, eigen, 1 << 62, task)
    block = max(MIN_STREAM_BLOCK, min(MAX_STREAM_BLOCK, budget // 20))
    shared = 2 * square if ray and subspace else 0  # T put once into the object store, mapped by driver and workers
    libraries = RUNTIME_WORKSPACE + (workers * WORKER_RUNTIME if ray else 0)
    fixed = libraries + STREAM_COPIES * block + document + accumulators + eigen + kept + shared
    minimum_totals = 2 * square + width * 1024 * 4 if subspace else 0  # what subspace_batches needs at least
    fixed += workers * task
    if fixed + minimum_totals > budget:
        parts = ["the stream", "accumulators"] + (["subspace totals"] if subspace else []) + (
            [f"{workers} Ray workers"] if ray else [])
        need = fixed + minimum_totals
        raise SolverInputError(
            f"--max-memory {format_bytes(budget)} is too small for width {width} and a longest document of "
            f"{longest_document} tokens: {_listed(parts)} need about {format_bytes(need)}; raise it or solve "
            f"fewer methods, poolings or concepts at once{' (or use fewer --workers)' if ray else ''}"
        )
    return MemoryPlan(budget, block, document, accumulators, eigen, budget - fixed, task)


def _listed(parts: list[str]) -> str:
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def pin_malloc_thresholds() -> bool:
    """Keep glibc from fragmenting the heap while streaming; True when applied (glibc only).

    glibc raises its mmap threshold after each large free (up to 32 MB), after which the mid-size buffers
    of a stream (a document's rows, SVD factors, pooled batches) come from the heap and fragment it:
    measured +70 MB RSS streaming a 300 MB cache with 6 MB blocks. Pinning the thresholds (which turns the
    adjustment off) keeps buffers above 128 KiB mmap-ed and returned to the system when freed.
    Process-wide and permanent: the job sets it only when a memory budget is given.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 128 << 10)) and bool(mallopt(m_trim_threshold, 128 << 10))
