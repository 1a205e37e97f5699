"""A decoder stack run layer by layer over a contiguous range, with locally built rotary embeddings and masks.

This is what both the single-process builder and every pipeline stage run: stage 0 embeds, each stage runs its
own layers, nobody runs the final norm or the lm_head, and only hidden states travel between stages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["DecoderStack", "attention_inputs", "pad_batch"]


def attention_inputs(attention_mask: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Position ids and the additive 4-D causal mask for a padded batch (either padding side).

    Positions count real tokens only, so a left-padded document sees the same rotary phases as an unpadded one.
    """
    mask = attention_mask.bool()  # (B, T)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
    seq = mask.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=mask.device).tril()  # (T, T)
    allowed = causal[None, :, :] & mask[:, None, :]  # (B, T, T): query i may see key j
    additive = torch.zeros(allowed.shape, dtype=dtype, device=mask.device)
    additive.masked_fill_(~allowed, torch.finfo(dtype).min)
    return positions, additive[:, None, :, :]  # (B, T), (B, 1, T, T)


class DecoderStack(nn.Module):
    """The embedding and a subset of decoder layers of a transformers causal LM (Llama, Qwen2/3, Qwen3-MoE, ...)."""

    def __init__(self, embed_tokens: nn.Module | None, layers: dict[int, nn.Module], rotary_emb: nn.Module) -> None:
        super().__init__()
        self.embed_tokens = embed_tokens
        self.layers = nn.ModuleDict({str(i): layer for i, layer in layers.items()})
        self.rotary_emb = rotary_emb

    @classmethod
    def from_causal_lm(cls, model: nn.Module, layer_indices: Sequence[int] | None = None) -> DecoderStack:
        """Share the modules of a loaded model (no copy); default: every layer."""
        backbone: Any = model.model
        indices = range(len(backbone.layers)) if layer_indices is None else layer_indices
        return cls(backbone.embed_tokens, {i: backbone.layers[i] for i in indices}, backbone.rotary_emb)

    @property
    def device(self) -> torch.device:
        """Where the stack's weights live: a batch is moved there before the forward pass."""
        return next(self.parameters()).device

    @property
    def layer_modules(self) -> dict[int, nn.Module]:
        return {int(i): layer for i, layer in self.layers.items()}

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.embed_tokens is None:
            raise RuntimeError("this stack has no embedding: only pipeline stage 0 embeds")
        return self.embed_tokens(input_ids)  # (B, T, d)

    def run(self, hidden: torch.Tensor, attention_mask: torch.Tensor, first: int, stop: int) -> torch.Tensor:
        """Hidden states after layers [first, stop)."""
        positions, mask = attention_inputs(attention_mask.to(hidden.device), hidden.dtype)
        rotary = self.rotary_emb(hidden, positions)
        for index in range(first, stop):
            hidden = self.layers[str(index)](
                hidden, attention_mask=mask, position_ids=positions, position_embeddings=rotary
            )
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return hidden  # (B, T, d)


def pad_batch(sequences: Sequence[np.ndarray], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token sequences into (input_ids, attention_mask), padding on `side`."""
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        cols = slice(0, len(seq)) if side == "right" else slice(length - len(seq), length)
        input_ids[row, cols] = torch.as_tensor(seq, dtype=torch.long)
        attention_mask[row, cols] = 1
    return input_ids, attention_mask  # (B, T), (B, T)
