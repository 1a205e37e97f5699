"""The hook points a cache can hold: the one table of their names, widths, stored dtypes and the layers they
exist on.

Names follow TransformerLens where one exists. Every hook is one array per captured layer, `[tokens, width]`,
its width the model dimension its feature axis is named after (`MODEL_DIMS`): cache_builder/model_source.py
gives those from a config.json, cluster/volume.py from the planner's model shape, and the widths are recorded in
the cache fingerprint. Where each is taken in a decoder layer: cache_builder/capture.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .errors import InputError

__all__ = ["HookPoint", "HOOK_POINTS", "HOOKS", "HOOK_ALIASES", "HOOKS_HELP", "MODEL_DIMS", "ROUTER_EXPERT_DTYPE",
           "expand_hooks", "array_dtype", "is_integer_hook", "hook_widths", "check_layer_kinds"]

# expert ids: < 32768 experts (Qwen3-235B has 128, DeepSeek-V3 256); a missing chunk reads -1 (storage/dtypes.py)
ROUTER_EXPERT_DTYPE = "int16"


# the model dimension each feature axis spans: d_model = hidden_size, head_feature = heads x head_dim,
# d_ff = the dense MLP's intermediate_size, top_k = num_experts_per_tok
MODEL_DIMS = ("d_model", "head_feature", "d_ff", "top_k")


@dataclass(frozen=True)
class HookPoint:
    """One hook: its feature dimension (a MODEL_DIMS name: its width, and its name for xarray), its stored dtype
    (None: the cache's own) and the layers it exists on (`dense` MLP layers, `moe` layers, or `any`)."""

    name: str
    feature_dim: str
    what: str
    dtype: str | None = None
    layers: str = "any"


HOOK_POINTS: dict[str, HookPoint] = {h.name: h for h in (
    HookPoint("resid_pre", "d_model", "decoder layer input (layer 0: the embeddings)"),
    HookPoint("resid_mid", "d_model", "residual stream after the attention block's residual add"),
    HookPoint("resid_post", "d_model", "decoder layer output"),
    HookPoint("attn_z", "head_feature", "input of self_attn.o_proj, [heads x head_dim], head-major"),
    HookPoint("mlp_in", "d_model", "MLP block input (after post_attention_layernorm)"),
    HookPoint("mlp_out", "d_model", "MLP block output (before the residual add)"),
    HookPoint("mlp_act", "d_ff", "input of mlp.down_proj: SwiGLU activations", layers="dense"),
    HookPoint("router_experts", "top_k", "routed expert ids per token, in top-k order", ROUTER_EXPERT_DTYPE, "moe"),
    HookPoint("router_weights", "top_k", "their routing weights, as the experts use them", layers="moe"),
)}
HOOKS = tuple(HOOK_POINTS)
# names a user may give for several hooks at once
HOOK_ALIASES = {"router": ("router_experts", "router_weights")}
HOOKS_HELP = f"comma list of {', '.join(HOOKS)}; router = router_experts,router_weights (MoE layers)"


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


def hook_widths(hooks: Sequence[str], dims: Mapping[str, int]) -> dict[str, int]:
    """Each hook's row width from the model's dimensions (MODEL_DIMS -> size; 0 or absent: the model has none)."""
    lacking = [h for h in hooks if not dims.get(HOOK_POINTS[h].feature_dim)]
    if lacking:
        raise InputError(f"hook(s) {lacking} need a model with {HOOK_POINTS[lacking[0]].feature_dim} (router hooks "
                         f"need routed experts): capture {', '.join(h for h in HOOKS if h not in lacking)} instead")
    return {h: int(dims[HOOK_POINTS[h].feature_dim]) for h in hooks}


def check_layer_kinds(hooks: Sequence[str], layers: Sequence[int], is_moe_layer: Callable[[int], bool]) -> None:
    """Refuse a dense-only hook (mlp_act) on a MoE layer, or a router hook on a dense layer, naming the layers."""
    for hook in hooks:
        kind = HOOK_POINTS[hook].layers
        wrong = [i for i in layers if kind != "any" and is_moe_layer(i) != (kind == "moe")]
        if wrong:
            other = "dense MLP" if kind == "moe" else "MoE (routed experts, no single down_proj)"
            fix = "router" if kind == "dense" else "mlp_act"
            raise InputError(f"{hook} exists only on {kind} layers, but layer(s) {wrong} are {other}: capture "
                             f"{fix}, mlp_in or mlp_out there, or choose other --layers")
