"""Subspace: the directions that whole token trajectories of a concept share more than its negatives do.

Per document, the right singular vectors of the centred token matrix span its trajectory; averaging their
projectors over positives and negatives and taking the top eigenvectors of the difference gives the
concept's common directions (SOLVERS.md, with Deviations 1 and 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from actcache.solvers.caa import normalize
from actcache.solvers.errors import SolverInputError
from actcache.solvers.executor import scipy_blas_threads
from actcache.solvers.finite import all_finite
from torch import Tensor

REL_TOL = 1e-6  # Deviation 1: singular values <= REL_TOL x the largest are dropped


def _last_token_basis(h: Tensor) -> Tensor:
    return normalize(h[-1].float())[:, None]  # (d, 1)


def trajectory_basis(h: Tensor, k: int | None = None, rel_tol: float = REL_TOL) -> Tensor:
    """Orthonormal basis (d, k_i) of a document's centred token trajectory `h` (n_tok, d).

    Keeps at most `k` right singular vectors (all by default, clamped to min(n_tok, d)) and drops the ones
    centring makes arbitrary (Deviation 1): centring removes one dimension, so at most n_tok - 1 vectors
    survive, and any with singular value <= rel_tol x the largest are dropped too. The token mean is taken
    and subtracted in float64 (then the SVD runs in float32): subtracting in float32 leaves a residue of
    eps x |offset| that, with the large offsets of real activations, lifts the null singular value above
    the threshold. One token, a failed SVD or a constant trajectory fall back to the normalised last-token
    vector as a single column. Non-finite input is refused, never replaced by that fallback.
    """
    if not all_finite(h):
        raise SolverInputError("a token trajectory has non-finite values (NaN/inf): run `actcache verify` on the "
                               "cache, and leave the document out if it passes")
    if h.shape[0] < 2:
        return _last_token_basis(h)
    x = h.double()
    x = (x - x.mean(dim=0, keepdim=True)).float()  # (n_tok, d)
    try:  # LAPACK is several times faster on the tall orientation: x^T = U S V^T gives x's right vectors U
        if x.shape[0] < x.shape[1]:
            v, s, _ = torch.linalg.svd(x.T, full_matrices=False)  # v (d, r), s (r,)
        else:
            _, s, vh = torch.linalg.svd(x, full_matrices=False)  # s (r,), vh (r, d)
            v = vh.T
    except RuntimeError:
        return _last_token_basis(h)
    keep = s > rel_tol * s[0]
    keep[min(h.shape[0] - 1, k if k is not None else h.shape[0]) :] = False
    if not bool(keep.any()):
        return _last_token_basis(h)
    return v[:, keep]  # (d, k_i)


@dataclass(frozen=True)
class SubspaceResult:
    vector: Tensor  # (d,) unit, float32
    eigenvalues: list[float]  # top eigenvalues of M_pos - M_base, descending


@dataclass(frozen=True)
class SubspaceEigen:
    """Top eigenpairs of M_pos - M_base of one concept: shared by every pooling's orientation."""

    eigenvalues: Tensor  # (n_report,) descending
    eigenvectors: Tensor  # (d, eigen_k) matching the first eigen_k eigenvalues


def subspace_eigen(
    total: Tensor, n_total: int, concept_total: Tensor, n_concept: int, *, eigen_k: int = 5, n_report: int = 20
) -> SubspaceEigen:
    """Top eigenpairs of M_pos - M_base, M_pos = T_c / n_c and M_base = (T - T_c) / (n - n_c).

    `total` (d, d) sums projectors over every fitted document (n_total of them), `concept_total` over the
    concept's positives (n_concept). Only the top pairs are kept, so the result is small (Ray-friendly).
    """
    if n_concept < 1 or n_total - n_concept < 1:
        raise ValueError(f"subspace needs positives and negatives (got {n_concept} of {n_total} documents)")
    # M_pos - M_base built in one d x d buffer (a Ray worker holds T, T_c, this and eigh's output at once)
    diff = total - concept_total
    diff /= -(n_total - n_concept)  # -M_base
    diff.add_(concept_total, alpha=1.0 / n_concept)  # + M_pos
    evals, evecs = _top_eigh(diff, max(n_report, eigen_k))  # descending; evecs (d, m) columns
    del diff
    return SubspaceEigen(evals[:n_report].clone(), evecs[:, :eigen_k].clone())


def _top_eigh(m: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """The `count` largest eigenpairs of the symmetric `m` (d, d), descending; `m` is overwritten.

    On the CPU, LAPACK's MRRR (scipy, dsyevr) computes just those: under half the time of torch's full `eigh`
    at d = 576, with the same pairs to float noise. Elsewhere torch's full `eigh` (ascending) is cut down.
    """
    d = m.shape[0]
    if m.device.type != "cpu":
        evals, evecs = torch.linalg.eigh(m)  # ascending
        return evals.flip(0)[:count], evecs.flip(1)[:, :count]
    from scipy.linalg import eigh

    with scipy_blas_threads():
        # m's transpose is Fortran-ordered (LAPACK works in place, no copy); its upper triangle is m's lower
        # one, the triangle torch's eigh reads
        evals_np, evecs_np = eigh(m.numpy().T, lower=False, subset_by_index=[max(d - count, 0), d - 1],
                                  driver="evr", overwrite_a=True, check_finite=False)  # ascending
    return torch.from_numpy(evals_np).flip(0), torch.from_numpy(evecs_np).flip(1)


def oriented_direction(eigen: SubspaceEigen, caa_diff: Tensor) -> SubspaceResult:
    """Eigenvalue-weighted sum of the top eigenvectors, each oriented to a positive dot product with
    `caa_diff` (mean(P_c) - mean(N_c)) first (Deviation 2), and so is the result."""
    top = eigen.eigenvectors  # (d, k)
    diff = caa_diff.to(top.device, top.dtype)
    signs = torch.where(diff @ top < 0, -1.0, 1.0).to(top.dtype)  # (k,)
    vector = (top * signs * eigen.eigenvalues[: top.shape[1]].clamp_min(0)).sum(dim=1)  # (d,)
    if float(vector @ diff) < 0:
        vector = -vector
    return SubspaceResult(normalize(vector).float(), eigen.eigenvalues.tolist())


def subspace_direction(
    total: Tensor,
    n_total: int,
    concept_total: Tensor,
    n_concept: int,
    caa_diff: Tensor,
    *,
    eigen_k: int = 5,
    n_report: int = 20,
) -> SubspaceResult:
    """Subspace vector of one concept from projector totals: `subspace_eigen` then `oriented_direction`.

    The top `eigen_k` eigenvectors of M_pos - M_base are each oriented to a positive dot product with
    `caa_diff` before the eigenvalue-weighted sum (Deviation 2), and so is the result.
    """
    eigen = subspace_eigen(total, n_total, concept_total, n_concept, eigen_k=eigen_k, n_report=n_report)
    return oriented_direction(eigen, caa_diff)
