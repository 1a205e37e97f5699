"""`actcache logit-lens`: next-token distributions of cached residuals, without the model.

Each cached row (default `resid_post`) goes through the model's final RMSNorm and unembedding, both read straight
from the safetensors files the cache's model source names (`lm_head.weight`, or `embed_tokens.weight` when the
embeddings are tied, as in SmolLM2): two tensors, never the model. At the model's last layer this is the model's
own next-token distribution. Per layer, means over every token (float64 sums, streamed `batch_tokens` rows at a
time, so memory is one [batch_tokens, vocab] block plus the unembedding):

- `topk_mass`: probability mass of the `top_k` most likely tokens (the seed system's top-8 mass);
- `entropy` (nats) and `max_prob` of the distribution;
- `next_token_accuracy` and `next_token_nll`: against the token that actually follows (every position but a
  document's last).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from actcache.solvers.errors import SolverInputError

if TYPE_CHECKING:
    import torch
    from actcache.storage.reader import CacheReader

__all__ = ["LogitLensSettings", "Unembedding", "logit_lens_cache", "lens_statistics"]

OUTPUT = "logit_lens.json"
# model types whose final norm is RMSNorm `weight * x / rms(x)` (not Gemma's `(1 + weight)`) with no logit softcap
RMSNORM_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "mixtral")
RESIDUAL_HOOKS = ("resid_post", "resid_pre", "resid_mid")


@dataclass(frozen=True)
class LogitLensSettings:
    layers: str = "all"
    hook: str = "resid_post"
    top_k: int = 8
    batch_tokens: int = 256  # rows per [batch, vocab] logits block
    device: str = "cpu"
    overwrite: bool = False


class Unembedding:
    """The final norm and the unembedding of a cache's model, float32 on `device`."""

    def __init__(self, norm_weight: torch.Tensor, eps: float, matrix: torch.Tensor, source: str) -> None:
        self.norm_weight = norm_weight  # (d,)
        self.eps = eps
        self.matrix = matrix  # (vocab, d)
        self.source = source

    @classmethod
    def from_cache(cls, reader: CacheReader, device: str = "cpu") -> Unembedding:
        """Read `model.norm.weight` and `lm_head.weight` (tied: `embed_tokens.weight`) from the safetensors."""
        from actcache.solvers.layer_weights import LayerWeights

        config = reader.fingerprint.model.get("config") or {}
        model_type = config.get("model_type")
        if model_type not in RMSNORM_MODEL_TYPES:
            raise SolverInputError(f"logit lens: model type {model_type!r} is not one whose final norm it knows "
                                   f"(RMSNorm models: {', '.join(RMSNORM_MODEL_TYPES)})")
        weights = LayerWeights(reader.model_source)
        tied = bool(config.get("tie_word_embeddings", False))
        norm = weights.tensor("model.norm.weight")
        matrix = weights.tensor("embed_tokens.weight" if tied else "lm_head.weight")
        for lookup in (norm, matrix):
            if lookup.tensor is None:
                raise SolverInputError(f"logit lens needs the final norm and the unembedding: {lookup.reason}")
        assert norm.tensor is not None and matrix.tensor is not None
        source = "embed_tokens.weight (tied embeddings)" if tied else "lm_head.weight"
        return cls(norm.tensor.to(device), float(config.get("rms_norm_eps", 1e-6)), matrix.tensor.to(device), source)

    def log_probs(self, rows: torch.Tensor) -> torch.Tensor:
        """Next-token log-probabilities of residual rows: log_softmax(W_U rmsnorm(rows)), float32."""
        import torch

        x = rows.float()  # (n, d)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.norm_weight
        return torch.log_softmax(x @ self.matrix.T, dim=-1)  # (n, vocab)


def lens_statistics(log_probs: torch.Tensor, next_ids: torch.Tensor | None, top_k: int) -> dict[str, float]:
    """Sums over the rows of one block (divide by the counts for means): top-k mass, entropy, max prob, and for
    the rows that have a following token (`next_ids`, one per leading row) its accuracy and NLL."""
    probs = log_probs.exp()
    sums = {
        "topk_mass": float(probs.topk(top_k, dim=-1).values.sum(-1).double().sum()),
        "entropy": float(-(probs * log_probs).sum(-1).double().sum()),
        "max_prob": float(probs.max(-1).values.double().sum()),
        "n_tokens": float(len(log_probs)),
    }
    if next_ids is not None and len(next_ids):
        led = log_probs[:len(next_ids)]
        sums["next_token_accuracy"] = float((led.argmax(-1) == next_ids).double().sum())
        sums["next_token_nll"] = float(-led.gather(1, next_ids[:, None]).double().sum())
        sums["n_next_tokens"] = float(len(next_ids))
    return sums


def _layer_statistics(reader: CacheReader, hook: str, layer: int, unembedding: Unembedding,
                      settings: LogitLensSettings) -> dict[str, float]:
    import torch

    totals: dict[str, float] = {}
    for doc, rows in reader.iter_activations(hook, layer, check_finite=True):
        following = torch.from_numpy(reader.token_ids(doc.key)[1:].astype(np.int64)).to(settings.device)
        for start in range(0, len(rows), settings.batch_tokens):
            block = torch.from_numpy(rows[start:start + settings.batch_tokens]).to(settings.device)  # (b, d)
            sums = lens_statistics(unembedding.log_probs(block), following[start:start + len(block)],
                                   settings.top_k)
            for name, value in sums.items():
                totals[name] = totals.get(name, 0.0) + value
    n, n_next = totals.get("n_tokens", 0.0), totals.get("n_next_tokens", 0.0)
    means = {name: totals[name] / n for name in ("topk_mass", "entropy", "max_prob") if n}
    means |= {name: totals[name] / n_next for name in ("next_token_accuracy", "next_token_nll") if n_next}
    return {**means, "n_tokens": int(n), "n_next_tokens": int(n_next)}


def logit_lens_cache(cache: str | Path, out: str | Path | None, settings: LogitLensSettings) -> dict[str, Any]:
    """Per layer statistics of the lens over every cached token; written to `out/logit_lens.json` when `out`."""
    from actcache.solvers.job_inputs import check_output, resolve_layers
    from actcache.storage import open_cache
    from actcache.storage.atomic_dir import atomic_dir
    from actcache.storage.selection import model_layer_count

    if settings.top_k < 1 or settings.batch_tokens < 1:
        raise SolverInputError(f"--top-k {settings.top_k} / batch of {settings.batch_tokens}: both must be >= 1")
    out_path = None if out is None else check_output(out, settings.overwrite)
    reader = open_cache(cache)
    if settings.hook not in RESIDUAL_HOOKS or settings.hook not in reader.hooks:
        raise SolverInputError(f"the cache has no {settings.hook!r} residuals (hooks: {', '.join(reader.hooks)}): "
                               f"pick a residual hook (resid_post, resid_pre, resid_mid) with --hook")
    layers = sorted(resolve_layers(settings.layers, reader.layers, model_layer_count(reader.fingerprint)))
    unembedding = Unembedding.from_cache(reader, settings.device)
    result: dict[str, Any] = {
        "hook": settings.hook,
        "top_k": settings.top_k,
        "unembedding": unembedding.source,
        "layers": layers,
        "per_layer": {str(layer): _layer_statistics(reader, settings.hook, layer, unembedding, settings)
                      for layer in layers},
    }
    if out_path is not None:
        with atomic_dir(out_path, overwrite=settings.overwrite) as tmp:
            (tmp / OUTPUT).write_text(json.dumps(result, indent=1) + "\n")
    return result
