"""Per-feature mean and variance streamed in float64, shifted by the first row seen.

Activations often share a large common offset (the attention sink, a residual bias); summing raw squares would
cancel the variance away in `E[x^2] - E[x]^2`. Shifting by one real row keeps the sums small.
"""

from __future__ import annotations

import numpy as np


class ShiftedMoments:
    """Accumulates rows [n, d]; `mean()` and `variance()` (population) per feature."""

    def __init__(self) -> None:
        self.n = 0
        self._shift: np.ndarray | None = None
        self._total = np.zeros(0)
        self._square = np.zeros(0)

    def add(self, rows: np.ndarray) -> None:
        if not len(rows):
            return
        x = rows.astype(np.float64)  # (n, d), a copy
        if self._shift is None:
            self._shift, self._total, self._square = x[0].copy(), np.zeros(x.shape[1]), np.zeros(x.shape[1])
        x -= self._shift
        self._total += x.sum(axis=0)
        self._square += (x * x).sum(axis=0)
        self.n += len(x)

    def mean(self) -> np.ndarray:
        assert self._shift is not None, "no rows were added"
        return self._shift + self._total / self.n

    def variance(self) -> np.ndarray:
        assert self._shift is not None, "no rows were added"
        centred_mean = self._total / self.n
        return np.maximum(self._square / self.n - centred_mean * centred_mean, 0.0)
