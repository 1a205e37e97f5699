"""Per (hook, layer) mean, std and token-norm quantiles (`actcache stats`, stats_command.py): the normalisation
constants a sparse autoencoder or probe trainer computes first, from one sequential pass (the token loader reads
every requested array of a token together, each chunk once)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import NonFiniteError

if TYPE_CHECKING:
    from .reader import CacheReader

__all__ = ["activation_stats", "QUANTILES", "NORM_SAMPLE"]

QUANTILES = (0.0, 0.001, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999, 1.0)
NORM_SAMPLE = 1 << 22  # token norms kept for the quantiles; beyond this, a seeded uniform sample of tokens
READ_BATCH = 8192


class _Moments:
    """Running count, mean and sum of squared deviations per feature (Chan et al.'s merge, in float64)."""

    def __init__(self, width: int) -> None:
        self.n = 0
        self.mean = np.zeros(width)
        self.m2 = np.zeros(width)

    def add(self, rows: np.ndarray) -> None:  # rows: (b, d) float64
        b = len(rows)
        batch_mean = rows.mean(axis=0)
        delta = batch_mean - self.mean
        total = self.n + b
        self.m2 += ((rows - batch_mean) ** 2).sum(axis=0) + delta**2 * (self.n * b / total)
        self.mean += delta * (b / total)
        self.n = total

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.n, 1))


def activation_stats(reader: CacheReader, hooks: tuple[str, ...], layers: tuple[int, ...],
                     sample: int = NORM_SAMPLE) -> dict[str, Any]:
    """{"tokens", "norm_sample", "arrays": {"<hook>.<layer>": {mean, std (per feature, population), norm_mean,
    norm_quantiles, ...}}}; a NaN or infinite value is refused (NonFiniteError), never averaged in."""
    ds = reader.tokens(hooks=hooks, layers=layers, shuffle=False, batch_size=READ_BATCH)
    total = ds.plan.n_selected
    sampled = None if total <= sample else np.sort(np.random.default_rng(0).choice(total, sample, replace=False))
    keys = [key for key, _ in ds.settings.streams]
    moments = {key: _Moments(reader.width(key.rsplit(".", 1)[0])) for key in keys}
    norms: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    for batch in ds:
        tokens = batch["token_index"].numpy()
        keep = slice(None) if sampled is None else _members(tokens, sampled)
        for key in keys:
            rows = batch[key].numpy().astype(np.float64)  # (b, d)
            if not np.isfinite(rows).all():
                raise _non_finite(reader, key, tokens[~np.isfinite(rows).all(axis=1)])
            moments[key].add(rows)
            norms[key].append(np.linalg.norm(rows[keep], axis=1))
    arrays = {}
    for key in keys:
        hook, layer = key.rsplit(".", 1)
        norm = np.concatenate(norms[key])
        arrays[key] = {
            "hook": hook, "layer": int(layer), "tokens": moments[key].n,
            "norm_mean": float(norm.mean()), "norm_quantiles": dict(zip(map(str, QUANTILES),
                                                                        np.quantile(norm, QUANTILES).tolist(),
                                                                        strict=True)),
            "mean_norm": float(np.linalg.norm(moments[key].mean)), "std_mean": float(moments[key].std.mean()),
            "mean": moments[key].mean.tolist(), "std": moments[key].std.tolist(),
        }
    return {"cache": str(reader.path), "tokens": total, "norm_sample": min(total, sample), "arrays": arrays}


def _members(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    at = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[at] == values


def _non_finite(reader: CacheReader, key: str, tokens: np.ndarray) -> NonFiniteError:
    starts = np.cumsum([0] + [d.n_tokens for d in reader.documents()])
    docs = sorted({reader.documents()[int(np.searchsorted(starts, t, side="right")) - 1].key for t in tokens})
    return NonFiniteError(f"{key}: NaN/inf values in {len(tokens)} token(s) of documents {', '.join(docs[:3])}"
                          f"{' and more' if len(docs) > 3 else ''}: run `actcache verify {reader.path}`; if it "
                          "passes, the model produced them (e.g. a float16 overflow): rebuild in bfloat16 or float32")
