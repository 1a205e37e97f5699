"""Hook points and the context manager that records them during one forward pass.

Hook names follow TransformerLens where one exists: `resid_post` is a decoder layer's output, `attn_z` the input
of that layer's `self_attn.o_proj` (per-head attention outputs before W_O, viewable as [tokens, heads, head_dim]).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from actcache.storage.layout import HOOKS, activation_name
from torch import nn

from .runner import DecoderStack
from .settings import BuildSettingsError

__all__ = ["HOOKS", "check_hooks", "record_activations", "capture_range"]


def check_hooks(hooks: Sequence[str]) -> tuple[str, ...]:
    """Validate hook names early, with the list of valid ones."""
    unknown = [h for h in hooks if h not in HOOKS]
    if unknown or not hooks:
        raise BuildSettingsError(f"unknown hook(s) {unknown or hooks!r}: use one or more of {', '.join(HOOKS)}")
    return tuple(dict.fromkeys(hooks))


def _output_tensor(output: Any) -> torch.Tensor:
    # transformers 5 decoder layers return a tensor; older ones a tuple whose first item is the hidden state
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def record_activations(layers: Mapping[int, nn.Module], hooks: Sequence[str],
                       ) -> Iterator[dict[tuple[str, int], torch.Tensor]]:
    """Record `hooks` of the given decoder layers (index -> module) into the yielded dict, keyed (hook, index).

    The hooks never outlive the block, even when the forward pass raises.
    """
    records: dict[tuple[str, int], torch.Tensor] = {}
    handles = []

    def on_output(key: tuple[str, int]) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            records[key] = _output_tensor(output).detach()
        return hook

    def on_input(key: tuple[str, int]) -> Any:
        def hook(_module: nn.Module, args: Any) -> None:
            records[key] = args[0].detach()
        return hook

    try:
        for index, layer in layers.items():
            if "resid_post" in hooks:
                handles.append(layer.register_forward_hook(on_output(("resid_post", index))))
            if "attn_z" in hooks:
                o_proj = layer.get_submodule("self_attn.o_proj")
                handles.append(o_proj.register_forward_pre_hook(on_input(("attn_z", index))))
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
    return hidden, {activation_name(h, i): records[(h, i)][real] for h in hooks for i in captured}
