"""Ridge: how well each concept vector is a linear combination of the other concepts' vectors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class RidgeResult:
    r2: float | None  # 1 - |t - recon|^2 / |t|^2; > 0.9 means redundant; None with no other concept
    residual_norm: float | None
    top: list[tuple[str, float]]  # top contributors by |weight|, signed weight

    def to_dict(self) -> dict[str, object]:
        return {
            "ridge_r2": self.r2,
            "ridge_residual_norm": self.residual_norm,
            "ridge_top": [list(t) for t in self.top],
        }


def ridge_reconstruction(
    vectors: Tensor, concepts: list[str], *, lam: float = 0.01, top_k: int = 5
) -> list[RidgeResult]:
    """For each concept t of `vectors` (C, d): solve (O O^T + lam I) a = O t over the others O, in float64."""
    v = vectors.double()  # (C, d)
    gram = v @ v.T  # (C, C)
    out = []
    for t in range(v.shape[0]):
        others = [i for i in range(v.shape[0]) if i != t]
        if not others:
            out.append(RidgeResult(None, None, []))  # nothing to reconstruct it from: n/a, not 0
            continue
        idx = torch.tensor(others, device=v.device)
        lhs = gram[idx][:, idx] + lam * torch.eye(len(others), dtype=v.dtype, device=v.device)  # (C-1, C-1)
        a = torch.linalg.solve(lhs, gram[idx, t])  # (C-1,)
        residual = v[t] - a @ v[idx]  # (d,)
        norm2 = float(v[t] @ v[t])
        r2 = 1.0 - float(residual @ residual) / norm2 if norm2 > 0 else 0.0
        order = torch.argsort(a.abs(), descending=True, stable=True)[:top_k]
        out.append(RidgeResult(r2, float(residual.norm()), [(concepts[others[i]], float(a[i])) for i in order]))
    return out
