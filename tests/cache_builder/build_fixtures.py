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
