"""Where the per-(concept, layer) solves run: in this process (default), or as Ray tasks on local CPUs.

Ray starts only when asked (`workers > 1`): a solve of a small cache stays Ray-free and fast. Task
functions are plain module-level functions of tensors, so both executors run the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any


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
    """Ray tasks on `workers` local CPUs; large shared inputs (d x d totals) go to the object store once."""

    def __init__(self, workers: int) -> None:
        import ray

        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
        self._remote: dict[Callable[..., Any], Any] = {}

    def share(self, value: Any) -> Any:
        return self._ray.put(value)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = self._ray.remote(max_retries=1)(fn)
        return remote.remote(*args)

    def gather(self, handles: Sequence[Any]) -> list[Any]:
        return list(self._ray.get(list(handles)))

    def shutdown(self) -> None:
        if self._started:
            self._ray.shutdown()


Executor = LocalExecutor | RayExecutor


def make_executor(workers: int) -> Executor:
    """A Ray executor for `workers` > 1 CPUs, else the in-process one."""
    if workers < 1:
        raise ValueError(f"--workers {workers}: use 1 (in process) or more (Ray tasks)")
    return RayExecutor(workers) if workers > 1 else LocalExecutor()


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
