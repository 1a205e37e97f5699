"""Layer selections as people type them: `all`, `8,15`, `-1` (the model's last layer), or a list."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    from .fingerprint import CacheFingerprint

__all__ = ["LayerSelectionError", "model_layer_count", "select_layers"]

_EXAMPLE = "use e.g. 8,15, -1 (the last layer) or all"


class LayerSelectionError(InputError):
    """A `--layers` value that names no layers: not integers, empty, or negative with no layer count to count from."""


def select_layers(spec: str | Sequence[int], available: Sequence[int],
                  n_layers: int | None = None) -> tuple[tuple[int, ...], list[int]]:
    """(sorted unique wanted layers that are in `available`, the others as typed); `all` is every available layer.

    A negative index counts from the end of the model's `n_layers` decoder layers, as in Python: -1 is layer
    n_layers - 1 on the build side and the read side alike, so one `--layers` names the same layers everywhere.
    Callers raise their own error for the missing ones: only they know where the layers should have come from.
    """
    if isinstance(spec, str):
        if spec.strip() == "all":
            return tuple(available), []
        try:
            typed = [int(part) for part in spec.split(",") if part.strip()]
        except ValueError:
            raise LayerSelectionError(f"--layers {spec!r} is not a list of integers: {_EXAMPLE}") from None
    else:
        typed = [int(layer) for layer in spec]
    if not typed:
        raise LayerSelectionError(f"--layers is empty: {_EXAMPLE}")
    if any(layer < 0 for layer in typed) and n_layers is None:
        raise LayerSelectionError(f"--layers {_text(typed)}: this cache does not record the model's layer count, so "
                                  "negative layers cannot be counted from the end; give layer numbers from 0")
    resolved = {layer: layer + n_layers if layer < 0 and n_layers is not None else layer for layer in typed}
    allowed = set(available)
    missing = [layer for layer in typed if resolved[layer] not in allowed]
    return tuple(sorted({resolved[layer] for layer in typed} & allowed)), missing


def model_layer_count(fingerprint: CacheFingerprint) -> int | None:
    """Decoder layers of the model a cache was built from (its config's `num_hidden_layers`), if recorded."""
    config = fingerprint.model.get("config")
    count = config.get("num_hidden_layers") if isinstance(config, dict) else None
    return int(count) if isinstance(count, int) else None


def _text(layers: Sequence[int]) -> str:
    return ",".join(map(str, layers))
