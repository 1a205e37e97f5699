"""Real processes racing to create the same keys: the check behind every exclusive publish we rely on.

Each writer process opens its client once, then for every round waits at a barrier and tries to create
`race/<round>` with its own bytes. Exactly one writer may win each round, and what is stored must be its bytes.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any

__all__ = ["CreateFn", "race_to_create", "check_one_winner_each"]

# opener(target) -> create(key, data) -> True when this call created the key, False when it already existed
CreateFn = Callable[[str, bytes], bool]


def _writer(
    opener: Callable[[str], CreateFn], target: str, writer: int, rounds: int, barrier: Any, results: Any
) -> None:
    create = opener(target)
    outcomes = []
    for round_ in range(rounds):
        barrier.wait(timeout=60)
        outcomes.append(create(race_key(round_), payload(writer)))
    results.put((writer, outcomes))


def race_key(round_: int) -> str:
    return f"race/{round_:03d}"


def payload(writer: int) -> bytes:
    return f"writer-{writer}".encode()


def race_to_create(opener: Callable[[str], CreateFn], target: str, *, writers: int, rounds: int) -> list[list[bool]]:
    """Run the race in `writers` spawned processes; outcomes[writer][round]. `opener` must be a module function."""
    context = multiprocessing.get_context("spawn")  # no forked client runtimes or locks
    barrier = context.Barrier(writers)
    results = context.Queue()
    processes = [
        context.Process(target=_writer, args=(opener, target, writer, rounds, barrier, results))
        for writer in range(writers)
    ]
    for process in processes:
        process.start()
    try:
        outcomes = dict(results.get(timeout=120) for _ in processes)
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    assert all(process.exitcode == 0 for process in processes), [process.exitcode for process in processes]
    return [outcomes[writer] for writer in range(writers)]


def check_one_winner_each(outcomes: list[list[bool]], read: Callable[[str], bytes]) -> None:
    """Every round has exactly one winner, every other writer was told it lost, and the winner's bytes are stored."""
    for round_ in range(len(outcomes[0])):
        column = [writer_outcomes[round_] for writer_outcomes in outcomes]
        winners = [writer for writer, won in enumerate(column) if won is True]
        assert len(winners) == 1 and column.count(False) == len(column) - 1, (round_, column)
        assert read(race_key(round_)) == payload(winners[0]), round_
