"""Layer selections as people type them: `all`, `8,15`, or a list."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["select_layers"]


def select_layers(spec: str | Sequence[int], available: Sequence[int]) -> tuple[tuple[int, ...], list[int]]:
    """(sorted unique layers wanted, those of them not in `available`); `all` means every available layer.

    Callers raise their own error for the missing ones: only they know where the layers should have come from.
    """
    if isinstance(spec, str):
        if spec.strip() == "all":
            return tuple(available), []
        try:
            wanted = [int(part) for part in spec.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"--layers {spec!r} is not a list of integers: use e.g. 8,15 or all") from None
    else:
        wanted = list(spec)
    if not wanted:
        raise ValueError("--layers is empty: use e.g. 8,15 or all")
    allowed = set(available)
    return tuple(sorted(set(wanted))), [layer for layer in wanted if layer not in allowed]
