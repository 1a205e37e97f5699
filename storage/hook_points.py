"""The hook points a cache can hold: the one table of their names, feature dimensions and stored dtypes.

Names follow TransformerLens where one exists. Every hook is one array per captured layer, `[tokens, width]`;
the widths depend on the model and are recorded in the cache fingerprint (cache_builder/model_source.py computes
them, cluster/volume.py plans with them). Where each is taken in a decoder layer: cache_builder/capture.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import InputError

__all__ = ["HookPoint", "HOOK_POINTS", "HOOKS", "HOOK_ALIASES", "ROUTER_EXPERT_DTYPE", "ROUTER_NO_EXPERT",
           "expand_hooks", "array_dtype", "is_integer_hook"]

ROUTER_EXPERT_DTYPE = "int16"  # expert ids; < 32768 experts (Qwen3-235B has 128, DeepSeek-V3 256)
ROUTER_NO_EXPERT = -1  # fill value of expert-id chunks: a missing chunk reads -1, never a real expert


@dataclass(frozen=True)
class HookPoint:
    """One hook: its feature dimension's name (for xarray) and its stored dtype (None: the cache's own)."""

    name: str
    feature_dim: str
    what: str
    dtype: str | None = None


HOOK_POINTS: dict[str, HookPoint] = {h.name: h for h in (
    HookPoint("resid_pre", "d_model", "decoder layer input (layer 0: the embeddings)"),
    HookPoint("resid_mid", "d_model", "residual stream after the attention block's residual add"),
    HookPoint("resid_post", "d_model", "decoder layer output"),
    HookPoint("attn_z", "head_feature", "input of self_attn.o_proj, [heads x head_dim], head-major"),
    HookPoint("mlp_in", "d_model", "MLP block input (after post_attention_layernorm)"),
    HookPoint("mlp_out", "d_model", "MLP block output (before the residual add)"),
    HookPoint("mlp_act", "d_ff", "input of mlp.down_proj: SwiGLU activations (dense MLP layers only)"),
    HookPoint("router_experts", "top_k", "routed expert ids per token, in top-k order (MoE layers only)",
              ROUTER_EXPERT_DTYPE),
    HookPoint("router_weights", "top_k", "their routing weights, as the experts use them (MoE layers only)"),
)}
HOOKS = tuple(HOOK_POINTS)
# names a user may give for several hooks at once
HOOK_ALIASES = {"router": ("router_experts", "router_weights")}


def expand_hooks(names: Sequence[str]) -> tuple[str, ...]:
    """User hook names -> stored hooks (aliases expanded, duplicates dropped); unknown names are refused."""
    expanded = [h for name in names for h in HOOK_ALIASES.get(name, (name,))]
    unknown = [h for h in expanded if h not in HOOK_POINTS]
    if unknown or not expanded:
        known = ", ".join([*HOOKS, *HOOK_ALIASES])
        raise InputError(f"unknown hook(s) {unknown or list(names)!r}: use one or more of {known}")
    return tuple(dict.fromkeys(expanded))


def array_dtype(hook: str, cache_dtype: str) -> str:
    """The dtype a hook's values are stored in: the cache's compute dtype, or the hook's own (expert ids)."""
    point = HOOK_POINTS.get(hook)
    return point.dtype if point is not None and point.dtype is not None else cache_dtype


def is_integer_hook(hook: str) -> bool:
    return array_dtype(hook, "float32") != "float32"
