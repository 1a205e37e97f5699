"""Linear CKA between layers, streamed over tokens: exact from feature-space cross-products, or the unbiased
minibatch estimator when those do not fit in memory.

Exact (Kornblith et al. 2019): with X, Y the centred token matrices of two layers,
CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F). Streaming keeps, for the L layers side by side, the sum s and the
cross-product G = sum z z^T of z = x - c (c: the first token's rows, a fixed shift that keeps float64 sums far
from cancellation), then corrects once: the centred cross-product is G - n m m^T with m = s / n. One matrix of
(L d)^2 float64 holds every pair's X^T Y block.

Minibatch (Nguyen et al. 2021): per batch of m consecutive tokens, the unbiased HSIC_1 of the linear Gram
matrices K = X X^T (Song et al. 2012), averaged over batches; CKA = mean HSIC_1(K, L) / sqrt(mean HSIC_1(K, K)
mean HSIC_1(L, L)). HSIC_1 is invariant to a constant shift of the features, so each batch is centred first (for
float accuracy). A last batch of fewer than 4 tokens (HSIC_1 needs n >= 4) is left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["ExactCKA", "MinibatchCKA", "exact_bytes", "unbiased_hsic"]


def exact_bytes(n_layers: int, width: int) -> int:
    """Memory of the exact accumulator: the (L d)^2 float64 cross-product, doubled as headroom for the batch and
    block temporaries."""
    return 2 * 8 * (n_layers * width) ** 2


def _cka_from_hsic(hsic: np.ndarray) -> np.ndarray:
    """CKA matrix from a matrix of HSIC values between every pair."""
    scale = np.sqrt(np.clip(np.diag(hsic), 1e-300, None))
    return hsic / np.outer(scale, scale)


class ExactCKA:
    """Streaming exact linear CKA of L layers of equal width (torch float64 on `device`)."""

    def __init__(self, n_layers: int, width: int, device: str = "cpu") -> None:
        import torch

        self.n_layers, self.width, self.device = n_layers, width, device
        self.n = 0
        self._shift: Any = None
        self._sum = torch.zeros(n_layers * width, dtype=torch.float64, device=device)
        self._gram = torch.zeros((n_layers * width,) * 2, dtype=torch.float64, device=device)

    def update(self, rows: Sequence[np.ndarray]) -> None:
        """Add the same tokens' rows of every layer (each [b, d])."""
        import torch

        z = torch.from_numpy(np.concatenate(rows, axis=1)).to(self.device, torch.float64)  # (b, L d)
        if self._shift is None:
            self._shift = z[0].clone()
        z -= self._shift
        self._sum += z.sum(dim=0)
        self._gram.addmm_(z.T, z)
        self.n += len(z)

    def result(self) -> np.ndarray:
        """The [L, L] CKA matrix."""
        mean = self._sum / self.n
        self._gram.addr_(mean, mean, alpha=-self.n)  # centred: G - n m m^T
        d = self.width
        hsic = np.empty((self.n_layers, self.n_layers))
        for i in range(self.n_layers):
            for j in range(i, self.n_layers):
                block = self._gram[i * d:(i + 1) * d, j * d:(j + 1) * d]
                hsic[i, j] = hsic[j, i] = float(block.square().sum())
        return _cka_from_hsic(hsic)


def unbiased_hsic(k: Any, m: Any) -> Any:
    """HSIC_1 of two [n, n] Gram matrices (torch or numpy), n >= 4 (Song et al. 2012, eq. 5)."""
    n = k.shape[0]
    k = k * (1 - _eye_like(k))
    m = m * (1 - _eye_like(m))
    k_sum, m_sum = k.sum(), m.sum()
    return ((k * m).sum() + k_sum * m_sum / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (k.sum(0) * m.sum(0)).sum()) / (
        n * (n - 3))


def _eye_like(k: Any) -> Any:
    if isinstance(k, np.ndarray):
        return np.eye(len(k), dtype=k.dtype)
    import torch

    return torch.eye(k.shape[0], dtype=k.dtype, device=k.device)


class MinibatchCKA:
    """Streaming minibatch CKA of L layers: only one batch's L Gram matrices ([m, m] each) at a time."""

    def __init__(self, n_layers: int, batch_tokens: int, device: str = "cpu") -> None:
        self.n_layers, self.batch_tokens, self.device = n_layers, batch_tokens, device
        self._hsic = np.zeros((n_layers, n_layers))
        self.batches = 0
        self.n = 0

    def update(self, rows: Sequence[np.ndarray]) -> None:
        """Add one batch: the same tokens' rows of every layer (each [m, d], m >= 4)."""
        import torch

        grams = []
        for x in rows:
            xt = torch.from_numpy(x).to(self.device, torch.float64)  # (m, d)
            xt = xt - xt.mean(dim=0)
            grams.append(xt @ xt.T)  # (m, m)
        for i in range(self.n_layers):
            for j in range(i, self.n_layers):
                self._hsic[i, j] += float(unbiased_hsic(grams[i], grams[j]))
        self.batches += 1
        self.n += len(rows[0])

    def result(self) -> np.ndarray:
        hsic = np.triu(self._hsic) + np.triu(self._hsic, 1).T
        return _cka_from_hsic(hsic / self.batches)
