"""Build settings: the one place for the defaults the command line shows (cheap to import)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BuildSettings"]


@dataclass(frozen=True)
class BuildSettings:
    """Everything a build depends on; one place for the defaults the command line shows."""

    model: str
    corpus: str | Path
    out: str | Path
    layers: str | Sequence[int] = "all"
    hooks: Sequence[str] = ("resid_post", "attn_z")
    batch_size: int = 8
    max_length: int = 512
    dtype: str = "float32"
    unit_tokens: int = 8192
    padding_side: str = "right"
    truncation_side: str = "right"
    progress: bool = True
