"""The two weight matrices the solvers need (W_O for head writes, W_down for neuron alignment), read straight
from the safetensors files named in a cache's model source: only those tensors, never the whole model.

A missing file, a GGUF-only model or a MoE layer (no dense W_down) gives `None` with the reason, so every
other field of the solve still works.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

FP8_BLOCK = 128
_FLOAT8 = {getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n)}


@dataclass(frozen=True)
class WeightLookup:
    """A weight matrix (float32, as stored: (out, in)) or None with the reason it is unavailable."""

    tensor: Tensor | None
    reason: str | None = None


class LayerWeights:
    """Finds `layers.<i>.self_attn.o_proj.weight` and `layers.<i>.mlp.down_proj.weight` by scanning the
    safetensors headers (cheap: headers only) of the files a cache's `model_source` names."""

    def __init__(self, model_source: Mapping[str, Any] | None) -> None:
        self.source = model_source

    @cached_property
    def _files(self) -> tuple[dict[str, Path], str | None]:
        """(tensor name -> file, None) or ({}, reason no weights can be read)."""
        if not self.source:
            return {}, "the cache records no model source: rebuild it with a model directory of safetensors"
        files = [Path(f) for f in self.source.get("weight_files") or []]
        if not files:
            kind = "a GGUF file" if self.source.get("gguf_file") else "no safetensors files"
            return {}, f"the cache's model ({self.source.get('path')}) has {kind}: no safetensors weights to read"
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            return {}, f"weight file {missing[0]} is missing: restore the model files to get this field"
        from safetensors import safe_open

        names: dict[str, Path] = {}
        for file in files:
            with safe_open(str(file), framework="pt") as handle:
                names.update(dict.fromkeys(handle.keys(), file))
        return names, None

    def _find(self, suffix: str) -> str | None:
        names, _ = self._files
        pattern = re.compile(rf"(^|\.){re.escape(suffix)}$")
        found = [n for n in names if pattern.search(n)]
        return found[0] if found else None

    def _read(self, name: str) -> Tensor:
        from safetensors import safe_open

        names, _ = self._files
        with safe_open(str(names[name]), framework="pt") as handle:
            weight = handle.get_tensor(name)
            scale_name = name.removesuffix("weight") + "weight_scale_inv"
            if weight.dtype in _FLOAT8 and scale_name in names:
                return _dequantize(weight, _scale(names[scale_name], scale_name))
        return weight.float()

    def _lookup(self, layer: int, suffix: str, what: str) -> WeightLookup:
        names, reason = self._files
        if reason is not None:
            return WeightLookup(None, reason)
        name = self._find(f"layers.{layer}.{suffix}")
        if name is None:
            if what == "W_down" and any(f"layers.{layer}.mlp.experts." in n for n in names):
                return WeightLookup(None, f"layer {layer} is a MoE layer: no dense W_down")
            return WeightLookup(None, f"no tensor layers.{layer}.{suffix} in the model's weight files")
        return WeightLookup(self._read(name))

    def tensor(self, suffix: str) -> WeightLookup:
        """Any other tensor by the end of its name, e.g. `model.norm.weight` or `lm_head.weight` (the logit lens)."""
        names, reason = self._files
        if reason is not None:
            return WeightLookup(None, reason)
        name = self._find(suffix)
        if name is None:
            return WeightLookup(None, f"no tensor {suffix} in the model's weight files")
        return WeightLookup(self._read(name))

    def o_proj(self, layer: int) -> WeightLookup:
        """W_O of `layer`, (d_model, n_heads * head_dim)."""
        return self._lookup(layer, "self_attn.o_proj.weight", "W_O")

    def down_proj(self, layer: int) -> WeightLookup:
        """W_down of `layer`, (d_model, d_ff): one column per neuron; None with a reason on MoE layers."""
        return self._lookup(layer, "mlp.down_proj.weight", "W_down")


def _scale(file: Path, name: str) -> Tensor:
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        return handle.get_tensor(name).float()


def _block(n: int, blocks: int) -> int:
    """Block size along an axis of n with `blocks` scales: 128 (the FP8 checkpoints' weight_block_size, last
    block partial) when that fits, else an even split."""
    return FP8_BLOCK if -(-n // FP8_BLOCK) == blocks else -(-n // blocks)


def _dequantize(weight: Tensor, scale_inv: Tensor) -> Tensor:
    """Block-scaled float8 (fine-grained FP8 checkpoints): each block of weight times its scale."""
    rows, cols = weight.shape
    block_r, block_c = _block(rows, scale_inv.shape[0]), _block(cols, scale_inv.shape[1])
    scale = scale_inv.repeat_interleave(block_r, 0)[:rows].repeat_interleave(block_c, 1)[:, :cols]
    return weight.float() * scale
