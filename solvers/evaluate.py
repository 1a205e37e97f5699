"""Held-out evaluation: how well each concept vector separates its test positives from test negatives."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def projection_auroc(vectors: Tensor, pooled: Tensor, concept_of: Sequence[int]) -> list[float | None]:
    """Per concept, the AUROC of test-document projections on its vector (positives vs every other document).

    `vectors` (C, d), `pooled` (n, d) test documents, `concept_of` their concept indices (NEGATIVE_ONLY = -1).
    None where the test split lacks positives or negatives of the concept. Ties count one half
    (Mann-Whitney U).
    """
    proj = pooled.double() @ vectors.double().T  # (n, C)
    labels = torch.as_tensor(list(concept_of))
    out: list[float | None] = []
    for c in range(vectors.shape[0]):
        pos, neg = proj[labels == c, c], proj[labels != c, c]
        if len(pos) == 0 or len(neg) == 0:
            out.append(None)
            continue
        greater = (pos[:, None] > neg[None, :]).double().sum()
        ties = (pos[:, None] == neg[None, :]).double().sum()
        out.append(float((greater + 0.5 * ties) / (len(pos) * len(neg))))
    return out
