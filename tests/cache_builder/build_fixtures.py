"""Small corpora and an independent reference: a plain transformers forward of one document with hooks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

TEXTS = [
    "The kettle whistled while Mara read the letter twice.",
    "Rain.",
    "He laughed so hard at the joke that he had to sit down on the cold stone steps outside the bakery.",
    "A quiet afternoon in the office, the printer humming.",
    "She opened the gift and gasped: it was the watch her grandfather wore every day of his life.",
    "Tickets, please.",
    "The storm knocked out the power, and the whole street sat in the dark telling stories until dawn.",
]


def write_jsonl_corpus(path: Path, texts: list[str] = TEXTS) -> Path:
    """One JSONL document per text, labelled by parity so label round trips can be checked."""
    path.write_text("".join(json.dumps({"text": t, "parity": i % 2}) + "\n" for i, t in enumerate(texts)))
    return path


def reference_activations(model_dir: Path, text_ids: list[np.ndarray], layers: list[int], dtype: torch.dtype,
                          ) -> list[dict[tuple[str, int], torch.Tensor]]:
    """Per document, unbatched: decoder-layer outputs and o_proj inputs from a full transformers forward."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa").eval()
    results = []
    for ids in text_ids:
        seen: dict[tuple[str, int], torch.Tensor] = {}
        handles = []
        for i in layers:
            layer = model.model.layers[i]
            handles.append(layer.register_forward_hook(_store(seen, ("resid_post", i), output=True)))
            handles.append(layer.self_attn.o_proj.register_forward_pre_hook(_store(seen, ("attn_z", i), output=False)))
        with torch.inference_mode():
            model(torch.as_tensor(ids)[None])
        for handle in handles:
            handle.remove()
        results.append({k: v[0] for k, v in seen.items()})
    return results


def _store(seen: dict, key: tuple[str, int], output: bool):
    def hook(_module, args, out=None):
        value = out if output else args[0]
        seen[key] = value[0] if isinstance(value, tuple) else value
    return hook



def reference_hooks(model_dir: Path, text_ids: list[np.ndarray], layers: list[int],
                    dtype: torch.dtype = torch.float32) -> list[dict[tuple[str, int], torch.Tensor]]:
    """Per document, unbatched, the extra hooks, each from another place than the builder takes it: resid_pre from
    `output_hidden_states`, resid_mid as resid_pre + the attention output, mlp_in as the post-attention norm's
    output, mlp_out as the MLP's output, and mlp_act / router recomputed by hand from mlp_in and the weights."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa").eval()
    return [_reference_hooks(model, ids, layers, dtype) for ids in text_ids]


def _reference_hooks(model, ids: np.ndarray, layers: list[int], dtype: torch.dtype,
                     ) -> dict[tuple[str, int], torch.Tensor]:
    seen: dict[tuple[str, int], torch.Tensor] = {}
    handles = []
    for i in layers:
        layer = model.model.layers[i]
        handles.append(layer.self_attn.register_forward_hook(_store(seen, ("attn_out", i), output=True)))
        handles.append(layer.post_attention_layernorm.register_forward_hook(_store(seen, ("mlp_in", i), output=True)))
        handles.append(layer.mlp.register_forward_hook(_store(seen, ("mlp_out", i), output=True)))
    with torch.inference_mode():
        hidden_states = model(torch.as_tensor(ids)[None], output_hidden_states=True).hidden_states
        for handle in handles:
            handle.remove()
        out: dict[tuple[str, int], torch.Tensor] = {}
        for i in layers:
            mlp, mlp_in = model.model.layers[i].mlp, seen[("mlp_in", i)][0]  # (T, d)
            out[("resid_pre", i)] = hidden_states[i][0]
            out[("resid_mid", i)] = hidden_states[i][0] + seen[("attn_out", i)][0]
            out[("mlp_in", i)], out[("mlp_out", i)] = mlp_in, seen[("mlp_out", i)][0]
            if hasattr(mlp, "down_proj"):
                out[("mlp_act", i)] = torch.nn.functional.silu(mlp_in @ mlp.gate_proj.weight.T) * (
                    mlp_in @ mlp.up_proj.weight.T)  # (T, d_ff)
            else:
                assert model.config.norm_topk_prob
                probs = torch.softmax((mlp_in @ mlp.gate.weight.T).float(), dim=-1)  # (T, n_experts)
                weights, experts = probs.topk(mlp.gate.top_k, dim=-1)  # (T, top_k)
                out[("router_experts", i)] = experts
                out[("router_weights", i)] = (weights / weights.sum(-1, keepdim=True)).to(dtype)
    return out
