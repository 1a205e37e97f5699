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


def _output_tensor(output: Any) -> torch.Tensor:
    # transformers 5 decoder layers return a tensor; older ones a tuple whose first item is the hidden state
    return output[0] if isinstance(output, tuple) else output


def _router_gate(layer: nn.Module, index: int) -> nn.Module:
    """The layer's top-k router (transformers 5 `...TopKRouter`: returns (logits, top-k weights, top-k ids))."""
    gate = getattr(getattr(layer, "mlp", None), "gate", None)
    if gate is None or not hasattr(gate, "top_k"):
        raise BuildSettingsError(f"layer {index} has no top-k router (mlp.gate): router hooks exist on MoE layers "
                                 f"only; choose other --layers or drop the router hooks")
    return gate


def _down_proj(layer: nn.Module, index: int) -> nn.Module:
    down = getattr(getattr(layer, "mlp", None), "down_proj", None)
    if not isinstance(down, nn.Linear):
        raise BuildSettingsError(f"layer {index} has no dense mlp.down_proj (a MoE layer?): mlp_act exists on dense "
                                 f"MLP layers only; capture router, mlp_in or mlp_out there")
    return down


def _register(layer: nn.Module, index: int, hook: str, record: Record) -> list[Any]:
    """Attach the hook(s) that record `hook` of one decoder layer; returns their handles."""
    def output_of(name: str) -> Any:
        return lambda _module, _args, output: record(name, _output_tensor(output))

    def input_of(name: str) -> Any:
        return lambda _module, args: record(name, args[0])

    if hook == "resid_pre":  # the layer's hidden_states, given positionally or by keyword
        return [layer.register_forward_pre_hook(
            lambda _m, args, kwargs: record(hook, args[0] if args else kwargs["hidden_states"]), with_kwargs=True)]
    if hook == "resid_post":
        return [layer.register_forward_hook(output_of(hook))]
    if hook == "attn_z":
        return [layer.get_submodule("self_attn.o_proj").register_forward_pre_hook(input_of(hook))]
    if hook == "resid_mid":  # the post-attention norm's input is the residual after the attention add
        return [layer.get_submodule("post_attention_layernorm").register_forward_pre_hook(input_of(hook))]
    if hook == "mlp_in":
        return [layer.get_submodule("mlp").register_forward_pre_hook(input_of(hook))]
    if hook == "mlp_out":
        return [layer.get_submodule("mlp").register_forward_hook(output_of(hook))]
    if hook == "mlp_act":
        return [_down_proj(layer, index).register_forward_pre_hook(input_of(hook))]
    if hook == "router_experts":
        return [_router_gate(layer, index).register_forward_hook(lambda _m, _a, out: record(hook, out[2]))]
    if hook == "router_weights":
        return [_router_gate(layer, index).register_forward_hook(lambda _m, _a, out: record(hook, out[1]))]
    raise BuildSettingsError(f"unknown hook {hook!r}: use one of {', '.join(HOOKS)}")


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
                handles.extend(_register(layer, index, hook, recorder(index)))
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
