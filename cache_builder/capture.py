"""Hook points and the context manager that records them during one forward pass.

Hook names follow TransformerLens where one exists (storage/hook_points.py is the table). In a decoder layer
(Llama, Qwen2/3, Qwen3-MoE):

    resid_pre -> input_layernorm -> self_attn (attn_z = o_proj input) -> + -> resid_mid
    resid_mid -> post_attention_layernorm -> mlp_in -> mlp [gate/up -> mlp_act -> down_proj | router -> experts]
    -> mlp_out -> + -> resid_post

Each is a forward (pre-)hook on the module whose input or output it is, so it is exactly what that module saw.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from actcache.storage.errors import InputError
from actcache.storage.hook_points import HOOKS, expand_hooks
from actcache.storage.layout import activation_name
from torch import nn

from .runner import DecoderStack
from .settings import BuildSettingsError

__all__ = ["HOOKS", "check_hooks", "record_activations", "capture_range"]

Record = Callable[[str, torch.Tensor], None]


def check_hooks(hooks: Sequence[str]) -> tuple[str, ...]:
    """Validate hook names early (aliases such as `router` expanded), with the list of valid ones."""
    try:
        return expand_hooks(hooks)
    except InputError as error:
        raise BuildSettingsError(str(error)) from None


@dataclass(frozen=True)
class _Site:
    """Where a hook is read: a submodule of the decoder layer ('' = the layer itself), its input or its output,
    and which item of a tuple output (transformers 5's top-k router returns (logits, top-k weights, top-k ids))."""

    module: str
    output: bool
    item: int = 0
    why: str = "Llama/Qwen-style decoder layers"  # when the submodule is missing: which layers have it


_SITES = {
    "resid_pre": _Site("", output=False),
    "resid_mid": _Site("post_attention_layernorm", output=False),  # the residual after the attention add
    "resid_post": _Site("", output=True),
    "attn_z": _Site("self_attn.o_proj", output=False),
    "mlp_in": _Site("mlp", output=False),
    "mlp_out": _Site("mlp", output=True),
    "mlp_act": _Site("mlp.down_proj", output=False, why="dense MLP layers only: capture router, mlp_in or mlp_out "
                                                         "on MoE layers"),
    "router_experts": _Site("mlp.gate", output=True, item=2, why="MoE layers with a top-k router only"),
    "router_weights": _Site("mlp.gate", output=True, item=1, why="MoE layers with a top-k router only"),
}


def _site_module(layer: nn.Module, index: int, hook: str, site: _Site) -> nn.Module:
    """The submodule a hook is read from, or a one-line refusal naming the layer (a dense layer has no router, a
    MoE layer no single down_proj; a router that returns only logits has no `top_k`)."""
    try:
        module = layer.get_submodule(site.module)
    except AttributeError:
        module = None
    if module is None or (hook.startswith("router_") and not hasattr(module, "top_k")) or (
            hook == "mlp_act" and not isinstance(module, nn.Linear)):
        raise BuildSettingsError(f"layer {index} has no {site.module} for {hook}: it exists on {site.why}; choose "
                                 f"other --layers or hooks")
    return module


def _register(layer: nn.Module, index: int, hook: str, record: Record) -> Any:
    """Attach the hook that records `hook` of one decoder layer; returns its handle."""
    site = _SITES[hook]
    module = _site_module(layer, index, hook, site)
    if site.output:
        def on_output(_module: nn.Module, _args: Any, output: Any) -> None:
            record(hook, output[site.item] if isinstance(output, tuple) else output)
        return module.register_forward_hook(on_output)

    def on_input(_module: nn.Module, args: Any, kwargs: Any) -> None:  # given positionally or by keyword
        record(hook, args[0] if args else kwargs["hidden_states"])
    return module.register_forward_pre_hook(on_input, with_kwargs=True)


@contextmanager
def record_activations(layers: Mapping[int, nn.Module], hooks: Sequence[str],
                       ) -> Iterator[dict[tuple[str, int], torch.Tensor]]:
    """Record `hooks` of the given decoder layers (index -> module) into the yielded dict, keyed (hook, index).

    Router hooks record per flattened token, (B*T, top_k); every other hook (B, T, width). The hooks never
    outlive the block, even when the forward pass raises.
    """
    records: dict[tuple[str, int], torch.Tensor] = {}
    handles = []

    def recorder(index: int) -> Record:
        def record(hook: str, value: torch.Tensor) -> None:
            records[(hook, index)] = value.detach()
        return record

    try:
        for index, layer in layers.items():
            for hook in hooks:
                handles.append(_register(layer, index, hook, recorder(index)))
        yield records
    finally:
        for handle in handles:
            handle.remove()


def capture_range(stack: DecoderStack, inputs: torch.Tensor, attention_mask: torch.Tensor, first: int, stop: int,
                  captured: Mapping[int, nn.Module], hooks: Sequence[str], *, embed: bool,
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run layers [first, stop) of a padded batch (token ids when `embed`, else hidden states).

    Returns the hidden states and, per captured array name, the real-token rows in document order: padding is
    dropped here, so it is never stored.
    """
    with torch.inference_mode(), record_activations(captured, hooks) as records:
        hidden = stack.embed(inputs) if embed else inputs  # (B, T, d)
        hidden = stack.run(hidden, attention_mask, first, stop)
    real = attention_mask.bool()  # (B, T)
    return hidden, {activation_name(h, i): records[(h, i)].reshape(*real.shape, -1)[real]
                    for h in hooks for i in captured}
