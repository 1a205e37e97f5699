"""Per-head ranking of o_proj inputs (`attn_z`): which attention heads carry a concept, without reruns.

From pooled o_proj inputs viewed as (n_heads, head_dim): each head's difference of means against the
spread of the negatives (selectivity), and, given W_O, the head's write into the residual stream
projected on the concept direction (the ablation-free counterpart of arXiv 2510.11328's head zeroing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from actcache.solvers.sufficient_stats import MomentTotals
from torch import Tensor

STD_FLOOR = 1e-6
DEFAULT_TOP_HEADS = 10  # heads reported per concept, and summed by head_concentration


@dataclass(frozen=True)
class HeadRanking:
    top: list[tuple[int, float, float]]  # [head, raw_norm, selectivity], by selectivity descending
    head_concentration: float | None  # top heads' raw norms / all raw norms; None when top_k >= n_heads
    raw_norm: Tensor  # (n_heads,)
    selectivity: Tensor  # (n_heads,)

    def to_dict(self) -> dict[str, object]:
        return {"top_heads": [list(t) for t in self.top], "head_concentration": self.head_concentration}


def _per_head(v: Tensor, n_heads: int) -> Tensor:
    if v.shape[-1] % n_heads:
        raise ValueError(f"attn_z width {v.shape[-1]} is not a multiple of n_heads={n_heads}: check the head count")
    return v.reshape(*v.shape[:-1], n_heads, v.shape[-1] // n_heads)  # (..., H, head_dim)


def rank_heads(diff: Tensor, neg_std: Tensor, n_heads: int, *, top_k: int = DEFAULT_TOP_HEADS) -> HeadRanking:
    """Rank heads from `diff` = mean_P z - mean_N z and the per-coordinate negative std, (H*hd,) each."""
    raw = _per_head(diff.double(), n_heads).norm(dim=-1)  # (H,)
    spread = _per_head(neg_std.double(), n_heads).norm(dim=-1).clamp_min(STD_FLOOR)  # (H,)
    selectivity = raw / spread
    order = torch.argsort(selectivity, descending=True, stable=True)[:top_k]
    top = [(int(h), float(raw[h]), float(selectivity[h])) for h in order]
    # the top 10 of <= 10 heads are all of them (always 1.0): the measure only means something when k < n_heads
    concentration = float(raw[order].sum() / raw.sum().clamp_min(STD_FLOOR)) if top_k < n_heads else None
    return HeadRanking(top, concentration, raw, selectivity)


def rank_heads_from_totals(totals: MomentTotals, concept: int, n_heads: int, *,
                           top_k: int = DEFAULT_TOP_HEADS) -> HeadRanking:
    """`rank_heads` of one concept from streaming totals of pooled attn_z (built with squares=True)."""
    return rank_heads(totals.diff(concept), totals.negative_std(concept), n_heads, top_k=top_k)


def head_write_projection(diff: Tensor, w_o: Tensor, direction: Tensor, n_heads: int) -> Tensor:
    """Per head h, direction . (W_O[:, h] diff_h): how far the head's mean write moves along the concept.

    `diff` (H*head_dim,) is the attn_z difference of means, `w_o` the o_proj weight (d, H*head_dim) as
    stored (out x in), `direction` the unit concept vector (d,) in the residual stream it writes to.
    Returns (n_heads,) float64.
    """
    w = _per_head(w_o.double(), n_heads)  # (d, H, head_dim)
    z = _per_head(diff.double(), n_heads)  # (H, head_dim)
    along = direction.double() @ w.reshape(w.shape[0], -1)  # (H*head_dim,) = direction^T W_O
    return (_per_head(along, n_heads) * z).sum(dim=-1)  # (H,)


def top_write_heads(projection: Tensor, top_k: int = 10) -> list[list]:
    """[[head, signed projection]] of the `top_k` heads writing most along the concept (by |projection|)."""
    order = torch.argsort(projection.abs(), descending=True, stable=True)[:top_k]
    return [[int(h), float(projection[h])] for h in order]
