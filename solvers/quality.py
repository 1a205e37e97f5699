"""Quality report of concept vectors: how clean, how concentrated, how redundant each concept is.

Per concept and layer from its pooled positives (kept by a `PooledStore`), its vector and optionally the
layer's MLP W_down; summarised by a triage label at the middle target layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from actcache.solvers.caa import normalize
from torch import Tensor

CLEAN_PC, FRAGMENTED_PC = 0.7, 0.4
REDUNDANT_R2, CONTAMINATED_COS, SINGLE_NEURON_COS = 0.9, 0.8, 0.6
# every label `triage` gives, cleanest first (the order reports list them in)
TRIAGE_ORDER = ("clean single-neuron", "clean low-dim circuit", "mixed", "fragmented", "contaminated", "redundant")


def middle_layer(layers: Sequence[int]) -> int:
    """The middle target layer: layers[len // 2] of the sorted layers (the upper middle of an even count)."""
    ordered = sorted(layers)
    return ordered[len(ordered) // 2]


def _std(x: Tensor) -> float:
    return float(x.std(correction=0)) if x.numel() else 0.0


def variance_ratios(positives: Tensor, top_k: int = 3) -> list[float]:
    """Squared singular values of the centred pooled positives (n, d) as fractions of their sum, top_k first.

    A single positive (or identical positives) has no spread: reported as [1.0].
    """
    x = positives.double()
    x = x - x.mean(dim=0, keepdim=True)  # (n, d)
    s2 = torch.linalg.svdvals(x) ** 2 if x.shape[0] > 1 else x.new_zeros(1)
    total = float(s2.sum())
    if total <= 0:
        return [1.0]
    return (s2[:top_k] / total).tolist()


def story_statistics(positives: Tensor, keys: Sequence[str], vector: Tensor) -> dict[str, object]:
    """Projections of the pooled positives on the unit `vector`, and cosines of the centred positives with it.

    Standard deviations are population ones (ddof=0). Alignments need >= 2 positives (else null); the two
    lowest are the layer's outlier stories.
    """
    x = positives.double()  # (n, d)
    v = normalize(vector.double())  # (d,)
    proj = x @ v  # (n,)
    ratios = variance_ratios(positives)
    out: dict[str, object] = {
        "first_pc_variance_ratio": ratios[0],
        "top3_variance_ratios": ratios,
        "story_projection_mean": float(proj.mean()),
        "story_projection_std": _std(proj),
        "story_projection_min": float(proj.min()),
        "story_projection_max": float(proj.max()),
        "story_alignment_mean": None,
        "story_alignment_std": None,
        "outlier_stories": [],
    }
    if x.shape[0] >= 2:
        centred = x - x.mean(dim=0, keepdim=True)
        align = (centred @ v) / centred.norm(dim=1).clamp_min(1e-12)  # (n,)
        order = torch.argsort(align, stable=True)[:2]
        out.update(
            story_alignment_mean=float(align.mean()),
            story_alignment_std=_std(align),
            outlier_stories=[[keys[i], float(align[i])] for i in order],
        )
    return out


def neuron_alignment(vector: Tensor, w_down: Tensor | None, reason: str = "no W_down given") -> dict[str, object]:
    """Cosine of `vector` with each unit-normalised W_down column (d, d_ff), ranked by |cos|, signed values.

    Without a dense W_down (MoE layer, weights not given) every field is null and `neuron_reason` says why.
    """
    if w_down is None:
        return {
            "best_neuron_idx": None,
            "best_neuron_cosine": None,
            "top5_neurons": None,
            "neuron_reason": reason,
        }
    cols = w_down.double()
    cos = normalize(vector.double().to(cols.device)) @ (cols / cols.norm(dim=0, keepdim=True).clamp_min(1e-12))
    order = torch.argsort(cos.abs(), descending=True, stable=True)[:5]  # (5,)
    return {
        "best_neuron_idx": int(order[0]),
        "best_neuron_cosine": float(cos[order[0]]),
        "top5_neurons": [[int(i), float(cos[i])] for i in order],
        "neuron_reason": None,
    }


def nearest_concepts(vectors: Tensor, concepts: Sequence[str], concept: int, top_k: int = 5) -> list[list]:
    """[[name, cosine]] of the `top_k` other concept vectors closest (by cosine) to `concept`'s."""
    unit = normalize(vectors.double())  # (C, d)
    cos = unit @ unit[concept]  # (C,)
    cos[concept] = -torch.inf
    order = torch.argsort(cos, descending=True, stable=True)[: min(top_k, len(concepts) - 1)]
    return [[concepts[i], float(cos[i])] for i in order]


def triage(layer_quality: Mapping[str, object], nearest: Sequence[Sequence]) -> str:
    """Triage label of one concept at the middle layer (order: redundancy, contamination, shape)."""
    r2 = layer_quality.get("ridge_r2")
    if isinstance(r2, float) and r2 > REDUNDANT_R2:
        return "redundant"
    if nearest and float(nearest[0][1]) > CONTAMINATED_COS:
        return "contaminated"
    first_pc = float(layer_quality["first_pc_variance_ratio"])  # type: ignore[arg-type]
    neuron = layer_quality.get("best_neuron_cosine")
    if first_pc > CLEAN_PC:
        if isinstance(neuron, float) and abs(neuron) > SINGLE_NEURON_COS:
            return "clean single-neuron"
        return "clean low-dim circuit"
    if first_pc < FRAGMENTED_PC:
        return "fragmented"
    return "mixed"


def concept_quality(
    per_layer: Mapping[int, Mapping[str, object]], nearest: Sequence[Sequence], n_positive: int
) -> dict[str, object]:
    """One concept's quality.json entry: per-layer fields plus middle-layer outliers, neighbours, triage."""
    mid = middle_layer(list(per_layer))
    at_mid = per_layer[mid]
    return {
        "n_positive_stories": n_positive,
        "middle_layer": mid,
        "triage": triage(at_mid, nearest),
        "outlier_stories": at_mid.get("outlier_stories", []),
        "nearest_concepts": [list(n) for n in nearest],
        "layers": {str(layer): dict(q) for layer, q in sorted(per_layer.items())},
    }
