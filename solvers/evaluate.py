"""Held-out evaluation: how well each concept vector separates its test positives from test negatives."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _membership(members: np.ndarray | Tensor, n_docs: int, n_concepts: int) -> np.ndarray:
    out = np.asarray(members, dtype=bool)
    if out.shape != (n_docs, n_concepts):
        raise ValueError(f"membership shape {out.shape} != ({n_docs}, {n_concepts}): one row per document, one "
                         f"column per concept")
    return out


def projection_auroc(vectors: Tensor, pooled: Tensor, members: np.ndarray | Tensor) -> list[float | None]:
    """Per concept, the AUROC of test-document projections on its vector (positives vs every other document).

    `vectors` (C, d), `pooled` (n, d) test documents, `members` (n, C) bool: `members[i, c]` says document i is a
    positive of concept c (a document may be a positive of several; `LabelSets.membership`). None where the test
    split lacks positives or negatives of the concept. scikit-learn's `roc_auc_score` (sort-based, ties count one
    half): memory linear in the number of documents.
    """
    from sklearn.metrics import roc_auc_score

    proj = (pooled.double() @ vectors.double().T).cpu().numpy()  # (n, C)
    labels = _membership(members, *proj.shape)
    out: list[float | None] = []
    for c in range(vectors.shape[0]):
        positive = labels[:, c]
        if positive.all() or not positive.any():
            out.append(None)
            continue
        out.append(float(roc_auc_score(positive, proj[:, c])))
    return out


def projection_separation(vectors: Tensor, pooled: Tensor, members: np.ndarray | Tensor) -> list[float | None]:
    """Per concept, how far apart its test positives and negatives lie along its vector, in standard deviations:
    (mean_pos - mean_neg) / sqrt((var_pos + var_neg) / 2) of the projections (population variances).

    `members` as for `projection_auroc`. None where the test split lacks positives or negatives of the concept,
    or both sides have no spread.
    """
    proj = pooled.double() @ vectors.double().T  # (n, C)
    labels = torch.from_numpy(_membership(members, *proj.shape))
    out: list[float | None] = []
    for c in range(vectors.shape[0]):
        pos, neg = proj[labels[:, c], c], proj[~labels[:, c], c]
        if len(pos) == 0 or len(neg) == 0:
            out.append(None)
            continue
        spread = float((pos.var(correction=0) + neg.var(correction=0)) / 2) ** 0.5
        out.append(float(pos.mean() - neg.mean()) / spread if spread > 0 else None)
    return out
