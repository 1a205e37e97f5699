"""L2-regularised logistic regression without intercept, fitted exactly as scikit-learn's `lbfgs` solver fits it.

`LogisticRegression(fit_intercept=False)` (l2 penalty, solver lbfgs) minimises
`mean_i [log(1 + exp(x_i w)) - y_i x_i w] + |w|^2 / (2 C n)` with one scipy L-BFGS-B call from w = 0 (options
maxiter = max_iter, maxls = 50, gtol = tol, ftol = 64 eps). Making that same call on the same objective gives
the same coefficients (to float noise; its tolerance-stopped answer, not the exact optimum) without importing
scikit-learn (~1.3 CPU s, more than a sweep's 48 small fits) or running its input checks on every fit.
scipy's BLAS runs with torch's thread count (`executor.scipy_blas_threads`).
"""

from __future__ import annotations

import warnings

import torch
from actcache.solvers.executor import scipy_blas_threads
from torch import Tensor

__all__ = ["LBFGS_DEFAULTS", "lbfgs_logistic"]

LBFGS_DEFAULTS = {"C": 1.0, "tol": 1e-4, "max_iter": 100}  # LogisticRegression's, the only settings this path takes


def lbfgs_logistic(x: Tensor, y: Tensor, *, c: float = 1.0, tol: float = 1e-4, max_iter: int = 100) -> Tensor:
    """Coefficients (d,) float64 of the fit of rows `x` (n, d) to labels `y` (n,) in {0, 1}; warns, as
    scikit-learn does, when L-BFGS-B stops before converging (raise `max_iter`)."""
    import numpy as np
    from scipy.optimize import minimize

    x, y = x.double(), y.double()  # (n, d), (n,)
    n = x.shape[0]
    l2 = 1.0 / (c * n)

    def loss_gradient(w_np: np.ndarray) -> tuple[float, np.ndarray]:
        w = torch.from_numpy(w_np)  # (d,)
        raw = x @ w  # (n,)
        loss = float((torch.logaddexp(raw, torch.zeros_like(raw)) - y * raw).mean()) + 0.5 * l2 * float(w @ w)
        return loss, (x.T @ ((torch.sigmoid(raw) - y) / n) + l2 * w).numpy()

    with scipy_blas_threads():
        result = minimize(loss_gradient, np.zeros(x.shape[1]), method="L-BFGS-B", jac=True,
                          options={"maxiter": max_iter, "maxls": 50, "gtol": tol, "ftol": 64 * np.finfo(float).eps})
    if result.status != 0:
        warnings.warn(f"logistic regression (lbfgs) stopped before converging after {result.nit} iteration(s): "
                      f"{result.message}; raise max_iter", RuntimeWarning, stacklevel=2)
    return torch.from_numpy(result.x)
