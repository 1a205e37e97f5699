"""Token-level probes streamed from the cache: memory is O(d^2), never the tokens of the split.

Features are standardised with the train mean and std (one pass of float64 sums). Classify: L2-penalised logistic
regression by Newton's method, each step one streamed pass accumulating the gradient and Hessian (torch float64 on
the device); regress: ridge from one pass of sufficient statistics; both reach the optimum that scikit-learn's
`LogisticRegression(C=1/l2)` / `Ridge(alpha=l2)` would find on the materialised tokens. Cluster: scikit-learn's
`MiniBatchKMeans.partial_fit` on shuffled windows of the stream, `epochs` passes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from actcache.solvers.analyses.probe_targets import DocTargets, Task
from actcache.solvers.analyses.shifted_moments import ShiftedMoments

if TYPE_CHECKING:
    from actcache.storage.reader import CacheReader

__all__ = ["LinearHead", "Standardizer", "FitSettings", "fit_token_probe", "labelled_rows", "predict_tokens",
           "token_moments"]


@dataclass(frozen=True)
class FitSettings:
    l2: float = 1.0  # penalty on the weights (not the intercept): scikit-learn's 1/C, Ridge's alpha
    max_iter: int = 50  # Newton passes of the logistic probe
    tol: float = 1e-10  # Newton stops when the decrease of the mean loss is below this
    batch_size: int = 4096  # tokens per product on the device, and per k-means minibatch
    epochs: int = 10  # k-means passes
    shuffle_bytes: int = 256 << 20  # k-means: the shuffle window
    seed: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class Standardizer:
    mean: np.ndarray  # (d,) float64
    scale: np.ndarray  # (d,) float64, 1 where a feature is constant

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale).astype(np.float32)


def labelled_rows(reader: CacheReader, hook: str, layer: int, docs: Sequence[DocTargets]
                  ) -> Iterator[tuple[DocTargets, np.ndarray]]:
    """(targets, rows [n_tok, d] float32) of each document, in storage order, NaN/inf refused."""
    by_key = {d.key: d for d in docs}
    for doc, rows in reader.iter_activations(hook, layer, list(by_key), check_finite=True):
        yield by_key[doc.key], rows


def token_moments(reader: CacheReader, hook: str, layer: int, docs: Sequence[DocTargets]) -> Standardizer:
    """Per-feature mean and std of the labelled tokens, in float64 sums shifted by the first row (so a large
    common offset does not cancel the variance away)."""
    moments = ShiftedMoments()
    for targets, rows in labelled_rows(reader, hook, layer, docs):
        moments.add(rows[np.isfinite(targets.y)])  # (n_lab, d)
    assert moments.n, "probe_targets checked each split"
    mean, std = moments.mean(), np.sqrt(moments.variance())
    return Standardizer(mean, np.where(std > 1e-12 * (1.0 + np.abs(mean)), std, 1.0))


def _windows(reader: CacheReader, hook: str, layer: int, docs: Sequence[DocTargets], scaler: Standardizer,
             rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(x [>= rows, d] float32 standardised, y) of consecutive labelled tokens in storage order (the last window
    may be shorter): the only tokens held at a time."""
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    held = 0
    for targets, block in labelled_rows(reader, hook, layer, docs):
        keep = np.isfinite(targets.y)
        xs.append(scaler(block[keep]))
        ys.append(targets.y[keep])
        held += int(keep.sum())
        if held >= rows:
            yield np.concatenate(xs), np.concatenate(ys)
            xs, ys, held = [], [], 0
    if held:
        yield np.concatenate(xs), np.concatenate(ys)


def _shuffled(reader: CacheReader, hook: str, layer: int, docs: Sequence[DocTargets], scaler: Standardizer,
              settings: FitSettings, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Minibatches of labelled tokens, each window of `shuffle_bytes` permuted by the seeded `rng`."""
    rows = max(settings.batch_size, settings.shuffle_bytes // (4 * reader.width(hook)))
    for x, y in _windows(reader, hook, layer, docs, scaler, rows):
        order = rng.permutation(len(x))
        for a in range(0, len(x), settings.batch_size):
            pick = order[a:a + settings.batch_size]
            yield x[pick], y[pick]


def _batches(reader: CacheReader, hook: str, layer: int, docs: Sequence[DocTargets], scaler: Standardizer,
             settings: FitSettings) -> Iterator[tuple[Any, Any]]:
    """(x [b, d + 1] float64 standardised with a ones column, y [b]) on the device, in storage order."""
    import torch

    for x_np, y_np in _windows(reader, hook, layer, docs, scaler, settings.batch_size):
        x = torch.from_numpy(x_np).to(settings.device, torch.float64)
        ones = torch.ones(len(x), 1, dtype=torch.float64, device=settings.device)
        yield torch.cat([x, ones], dim=1), torch.from_numpy(y_np).to(settings.device)


def _penalty(dim: int, l2: float, device: str) -> Any:
    """l2 on the diagonal of the weights, 0 for the intercept (the last coefficient)."""
    import torch

    diagonal = torch.full((dim,), l2, dtype=torch.float64, device=device)
    diagonal[-1] = 0.0
    return diagonal


def _ridge(batches: Iterator[tuple[Any, Any]], dim: int, settings: FitSettings) -> Any:
    """Ridge from one pass of sufficient statistics: (X^T X + l2 I) w = X^T y, X with its ones column (the
    unpenalised intercept column makes this the centred ridge of scikit-learn's `Ridge`)."""
    import torch

    gram = torch.zeros((dim, dim), dtype=torch.float64, device=settings.device)
    moment = torch.zeros(dim, dtype=torch.float64, device=settings.device)
    for x, y in batches:
        gram.addmm_(x.T, x)
        moment += x.T @ y
    return torch.linalg.solve(gram + torch.diag(_penalty(dim, settings.l2, settings.device)), moment)


def _logistic(make_batches: Any, dim: int, base_rate: float, settings: FitSettings) -> Any:
    """L2-penalised logistic regression by Newton's method, one streamed pass per step: each pass sums the loss,
    gradient X^T (p - y) and Hessian X^T diag(p (1 - p)) X at the current weights (memory: one (d+1)^2 matrix).
    A step that raises the loss is halved. The optimum is scikit-learn's `LogisticRegression(C=1/l2)`."""
    import torch

    penalty = _penalty(dim, settings.l2, settings.device)

    def evaluate(w: Any) -> tuple[float, Any, Any, int]:
        loss = torch.zeros((), dtype=torch.float64, device=settings.device)
        grad = penalty * w
        hess = torch.diag(penalty)
        n = 0
        for x, y in make_batches():
            eta = x @ w  # (b,)
            p = torch.sigmoid(eta)
            loss += (torch.nn.functional.softplus(eta) - y * eta).sum()
            grad += x.T @ (p - y)
            hess.addmm_(x.T, x * (p * (1 - p))[:, None])
            n += len(y)
        return float(loss + 0.5 * (penalty * w * w).sum()), grad, hess, n

    w = torch.zeros(dim, dtype=torch.float64, device=settings.device)
    w[-1] = float(np.log(base_rate / (1 - base_rate)))  # start at the base rate
    loss, grad, hess, n = evaluate(w)
    for _ in range(settings.max_iter):
        step = torch.linalg.solve(hess, grad)
        for _halving in range(10):
            new_loss, new_grad, new_hess, _ = evaluate(w - step)
            if new_loss <= loss:
                break
            step = step / 2
        else:
            break  # no descent along the Newton direction: at the optimum to float precision
        w = w - step
        converged = (loss - new_loss) / n < settings.tol
        loss, grad, hess = new_loss, new_grad, new_hess
        if converged:
            break
    return w


def fit_token_probe(reader: CacheReader, hook: str, layer: int, train: Sequence[DocTargets], task: Task,
                    n_classes: int, settings: FitSettings) -> tuple[Standardizer, Any]:
    """(standardiser, fitted model with `predict`) from the train tokens: a `LinearHead` (logistic or ridge on
    standardised features) or a `MiniBatchKMeans`."""
    scaler = token_moments(reader, hook, layer, train)
    if task == "cluster":
        from sklearn.cluster import MiniBatchKMeans

        rng = np.random.default_rng(settings.seed)
        kmeans = MiniBatchKMeans(n_clusters=n_classes, batch_size=settings.batch_size, random_state=settings.seed,
                                 n_init=3)
        for _ in range(settings.epochs):
            for x, _y in _shuffled(reader, hook, layer, train, scaler, settings, rng):
                if len(x) >= n_classes:  # partial_fit needs as many samples as clusters
                    kmeans.partial_fit(x)
        return scaler, kmeans
    dim = len(scaler.mean) + 1

    def make_batches() -> Iterator[tuple[Any, Any]]:
        return _batches(reader, hook, layer, train, scaler, settings)

    if task == "regress":
        return scaler, LinearHead(_ridge(make_batches(), dim, settings), task, settings.device)
    ys = np.concatenate([d.y for d in train])
    base_rate = float(ys[np.isfinite(ys)].mean())
    return scaler, LinearHead(_logistic(make_batches, dim, base_rate, settings), task, settings.device)


@dataclass(frozen=True)
class LinearHead:
    """A fitted linear probe on standardised features: weights with the intercept last."""

    coef: Any  # torch (d + 1,) float64
    task: Task
    device: str

    def predict(self, x: np.ndarray) -> np.ndarray:
        """P(positive) (classify) or the regressed value, per row of standardised `x`."""
        import torch

        xt = torch.from_numpy(x).to(self.device, torch.float64)
        out = xt @ self.coef[:-1] + self.coef[-1]
        return (torch.sigmoid(out) if self.task == "classify" else out).cpu().numpy()


def predict_tokens(model: Any, scaler: Standardizer, rows: np.ndarray) -> np.ndarray:
    """Per-token predictions of a fitted model: P(positive), the regressed value, or the cluster id."""
    return np.asarray(model.predict(scaler(rows)), dtype=np.float64)
