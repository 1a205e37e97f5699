"""Load only some decoder layers of a safetensors checkpoint, for one pipeline stage.

The model skeleton is built on the meta device (no memory), only the wanted checkpoint keys are read through the
index's weight map, and transformers' own loader (`convert_and_load_state_dict_in_model` with the model's
conversion mapping) materialises them: per-expert MoE keys are fused into the 3-D expert params exactly as
`from_pretrained` does, and a pre-quantized (fine-grained FP8) checkpoint goes through the same quantizer. Every
other layer, the final norm and the lm_head stay on the meta device and are never read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .model_source import DTYPES, ModelError, ResolvedModel, weight_files
from .runner import DecoderStack

__all__ = ["EMBED", "LoadedLayers", "checkpoint_tensors", "key_owner", "layer_bytes", "load_layers"]

EMBED = -1  # owner of the embedding's keys in `key_owner`
_LAYER_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_EMBED_KEY = re.compile(r"(?:^|\.)embed_tokens\.")


@dataclass(frozen=True)
class LoadedLayers:
    """A stage's modules, and exactly which checkpoint tensors were read to build them."""

    stack: DecoderStack
    keys_read: tuple[str, ...]
    bytes_read: int


def key_owner(key: str) -> int | None:
    """Decoder layer index of a checkpoint key, EMBED for the embedding, None for anything else (norm, lm_head)."""
    match = _LAYER_KEY.search(key)
    if match:
        return int(match.group(1))
    return EMBED if _EMBED_KEY.search(key) else None


def checkpoint_tensors(m: ResolvedModel) -> dict[str, tuple[str, int]]:
    """key -> (weight file, bytes on disk), from the index's weight map and the safetensors headers only."""
    out: dict[str, tuple[str, int]] = {}
    for path in weight_files(m):
        for key, entry in _header(Path(path)).items():
            start, stop = entry["data_offsets"]
            out[key] = (path, stop - start)
    return out


def layer_bytes(m: ResolvedModel, n_layers: int) -> tuple[list[int], int]:
    """Bytes on disk of each of layers 0..n_layers-1, and of the embedding: what a balanced partition weighs."""
    per_layer = [0] * n_layers
    embed = 0
    for key, (_, nbytes) in checkpoint_tensors(m).items():
        owner = key_owner(key)
        if owner == EMBED:
            embed += nbytes
        elif owner is not None and owner < n_layers:
            per_layer[owner] += nbytes
    return per_layer, embed


def load_layers(m: ResolvedModel, layers: Iterable[int], *, embed: bool, dtype: str = "float32",
                device: str = "cpu") -> LoadedLayers:
    """Decoder `layers` (plus the embedding when `embed`) on `device`, reading nothing else from the checkpoint."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import convert_and_load_state_dict_in_model
    from transformers.modeling_utils import LoadStateDictConfig
    from transformers.utils import logging as hf_logging

    if dtype not in DTYPES:
        raise ModelError(f"unsupported dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    wanted_layers = sorted(set(layers))
    torch_dtype = getattr(torch, dtype)
    quantizer, config = _quantizer(AutoConfig.from_pretrained(m.path), device)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype, attn_implementation="sdpa")
    if quantizer is not None:  # swap in quantized linear modules, as from_pretrained does (weights untouched)
        quantizer.preprocess_model(model=model, dtype=torch_dtype, device_map={"": device}, checkpoint_files=None,
                                   use_kernels=False)
    owned = set(wanted_layers) | ({EMBED} if embed else set())
    wanted = {k: v for k, v in checkpoint_tensors(m).items() if key_owner(k) in owned}
    handles = {path: safe_open(path, framework="pt", device="cpu") for path in {p for p, _ in wanted.values()}}
    state = {key: handles[path].get_slice(key) for key, (path, _) in wanted.items()}  # lazy: read on materialise
    load_config = LoadStateDictConfig(
        dtype=torch_dtype, device_map={"": device}, hf_quantizer=quantizer,
        weight_mapping=get_model_conversion_mapping(model, hf_quantizer=quantizer),  # type: ignore[arg-type]
    )
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one bar per stage and build is noise
    try:
        convert_and_load_state_dict_in_model(model, state, load_config)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    if quantizer is not None:
        quantizer.postprocess_model(model)
    backbone = model.model
    modules = {i: backbone.layers[i] for i in wanted_layers}
    _check_loaded(m, modules, backbone.embed_tokens if embed else None)
    rotary = type(backbone.rotary_emb)(config=model.config).to(device)  # inv_freq is not in the checkpoint
    stack = DecoderStack(backbone.embed_tokens if embed else None, modules, rotary)
    stack.eval().requires_grad_(False)
    return LoadedLayers(stack, tuple(sorted(wanted)), sum(n for _, n in wanted.values()))


def _quantizer(config: Any, device: str) -> tuple[Any, Any]:
    """transformers' quantizer for a pre-quantized checkpoint (e.g. fine-grained FP8) and the config it adjusts,
    chosen and validated exactly as `from_pretrained` does (FP8 without a GPU is dequantized to bf16 there)."""
    if getattr(config, "quantization_config", None) is None:
        return None, config
    from transformers.quantizers.auto import get_hf_quantizer

    quantizer, config, _ = get_hf_quantizer(config, None, {"": device}, True, {})
    return quantizer, config


def _check_loaded(m: ResolvedModel, modules: dict[int, Any], embed: Any) -> None:
    """Every param of the wanted modules came from the checkpoint (none left on the meta device)."""
    parts = [(f"layer {i}", mod) for i, mod in modules.items()] + ([("embedding", embed)] if embed is not None else [])
    for what, module in parts:
        missing = [n for n, p in module.named_parameters() if p.device.type == "meta"]
        if missing:
            raise ModelError(f"{m.path}: the checkpoint has no weights for {what} ({missing[0]}, ...): "
                             f"re-save the model with model.save_pretrained(dir)")


def _header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor name -> dtype, shape, data_offsets), without its data."""
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header: dict[str, Any] = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return header
