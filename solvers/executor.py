"""Where the per-(concept, layer) solves run: in this process (default), or as Ray tasks on local CPUs.

Ray starts only when asked (`workers > 1`): a solve of a small cache stays Ray-free and fast. Task
functions are plain module-level functions of tensors, so both executors run the same code. The Ray
executor keeps at most one task per worker submitted and unfinished, so their inputs (d x d totals, paired
samples) never all sit in the object store at once: the memory plan counts one task per worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import Any

from actcache.solvers.errors import SolverInputError


class LocalExecutor:
    """Runs each task when it is submitted; `share` and `gather` are the identity."""

    def share(self, value: Any) -> Any:
        return value

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)

    def gather(self, handles: Sequence[Any]) -> list[Any]:
        return list(handles)

    def shutdown(self) -> None:
        return None


class RayExecutor:
    """Ray tasks on `workers` local CPUs, at most one per worker unfinished at once; large shared inputs
    (d x d totals) go to the object store once. `pin_malloc` applies the driver's malloc setting in the
    workers too (see memory_budget.pin_malloc_thresholds)."""

    def __init__(self, workers: int, pin_malloc: bool = False) -> None:
        import ray

        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            # A private local instance: `--workers` is local fan-out, never a job on whatever cluster RAY_ADDRESS or
            # a `ray start` on this machine points at (ray.init would otherwise join it and refuse num_cpus).
            ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        self._task = ray.remote(max_retries=1)(_run_task)
        self._in_flight = workers
        self._pending: list[Any] = []
        self._pin_malloc = pin_malloc

    def share(self, value: Any) -> Any:
        return self._ray.put(value)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Submit `fn(*args)`, first waiting until fewer tasks than workers are unfinished."""
        while len(self._pending) >= self._in_flight:
            _, self._pending = self._ray.wait(self._pending, num_returns=1)
        handle = self._task.remote(self._pin_malloc, fn, *args)
        self._pending.append(handle)
        return handle

    def gather(self, handles: Sequence[Any]) -> list[Any]:
        gathered = set(handles)
        self._pending = [h for h in self._pending if h not in gathered]
        return list(self._ray.get(list(handles)))

    def shutdown(self) -> None:
        if self._started:
            self._ray.shutdown()


def _run_task(pin_malloc: bool, fn: Callable[..., Any], *args: Any) -> Any:
    """A task as a Ray worker runs it: under the driver's malloc setting when a memory budget is set."""
    if pin_malloc:
        from actcache.solvers.memory_budget import pin_malloc_thresholds

        pin_malloc_thresholds()
    return fn(*args)


Executor = LocalExecutor | RayExecutor


def make_executor(workers: int, pin_malloc: bool = False) -> Executor:
    """A Ray executor for `workers` > 1 CPUs (at most one task per worker unfinished), else the in-process one."""
    if workers < 1:
        raise SolverInputError(f"--workers {workers}: use 1 (in process) or more (Ray tasks)")
    return RayExecutor(workers, pin_malloc) if workers > 1 else LocalExecutor()


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with `n` intra-op CPU threads (None: leave torch's setting), restoring it afterwards.

    The per-document SVDs are small: on a busy machine two BLAS threads spin against each other and one
    is up to 20x faster (measured: 100 x 64 SVD 19 ms vs 1.1 ms). Parallelism comes from `workers`.
    """
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@cache
def _blas_pools() -> Any:
    """The BLAS thread pools loaded so far (scipy's included: the callers import scipy first)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextmanager
def scipy_blas_threads() -> Iterator[None]:
    """Run numpy's and scipy's BLAS with torch's thread count (`torch_threads`) while scipy solves.

    Their OpenBLAS threads spin after every call: on a busy machine the spinning burned several times the CPU of
    a sweep's small logistic fits and eigensolves. Import scipy before entering (the pools are looked up once).
    """
    import torch

    with _blas_pools().limit(limits=torch.get_num_threads(), user_api="blas"):
        yield
