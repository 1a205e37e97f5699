"""Pooling: one vector per document from its token matrix, chosen by a short string.

Every solver takes the pooling as a parameter, so one cached token matrix serves last-token, mean and span
readouts without rerunning the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from actcache.solvers.errors import SolverInputError
from torch import Tensor

PoolingKind = Literal["last", "mean", "mean-skip", "span"]
_SYNTAX = '"last", "mean", "mean-skip:K" or "span:A:B" (tokens A..B-1, 0-based)'


@dataclass(frozen=True)
class Pooling:
    """A pooling rule. `skip` is K of mean-skip; `start`/`stop` bound span (stop exclusive)."""

    kind: PoolingKind
    skip: int = 0
    start: int = 0
    stop: int = 0

    def __str__(self) -> str:
        if self.kind == "mean-skip":
            return f"mean-skip:{self.skip}"
        if self.kind == "span":
            return f"span:{self.start}:{self.stop}"
        return self.kind

    def min_tokens(self) -> int:
        """Fewest tokens a document needs for this pooling."""
        return {"last": 1, "mean": 1, "mean-skip": self.skip + 1, "span": self.stop}[self.kind]

    def token_slice(self, n_tokens: int, doc: str = "?") -> slice:
        """The token rows this pooling reads; a too-short document is an error naming it."""
        if n_tokens < self.min_tokens():
            raise SolverInputError(
                f"document {doc} has {n_tokens} tokens but pooling {self} needs {self.min_tokens()}: "
                f"choose a shorter pooling (e.g. last or mean) or drop the document"
            )
        if self.kind == "last":
            return slice(n_tokens - 1, n_tokens)
        if self.kind == "mean":
            return slice(0, n_tokens)
        if self.kind == "mean-skip":
            return slice(self.skip, n_tokens)
        return slice(self.start, self.stop)

    def __call__(self, h: Tensor, doc: str = "?") -> Tensor:
        """Pool `h` (n_tok, d) to (d,), averaging in float32 or wider."""
        if h.ndim != 2:
            raise SolverInputError(f"document {doc}: expected a [n_tokens, width] matrix, got shape {tuple(h.shape)}")
        rows = h[self.token_slice(h.shape[0], doc)]  # (n_sel, d)
        if self.kind == "last":
            return rows[0]
        wide = rows if rows.dtype in (torch.float32, torch.float64) else rows.float()
        return wide.mean(dim=0)  # (d,)


def parse_pooling(text: str) -> Pooling:
    """Parse "last" | "mean" | "mean-skip:K" | "span:A:B" into a `Pooling`."""
    parts = text.strip().split(":")
    try:
        if parts == ["last"] or parts == ["mean"]:
            return Pooling(parts[0])  # type: ignore[arg-type]
        if parts[0] == "mean-skip" and len(parts) == 2:
            skip = int(parts[1])
            if skip < 0:
                raise ValueError
            return Pooling("mean-skip", skip=skip)
        if parts[0] == "span" and len(parts) == 3:
            start, stop = int(parts[1]), int(parts[2])
            if not 0 <= start < stop:
                raise ValueError
            return Pooling("span", start=start, stop=stop)
    except ValueError:
        pass
    raise SolverInputError(f"bad pooling {text!r}: use {_SYNTAX} with 0 <= K and 0 <= A < B")
