"""Partial loading on its own: the right tensors, fused MoE experts equal to transformers' full load, and a
stage's memory growing with its share of layers (measured in fresh processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from actcache.cache_builder.model_source import load_model, resolve_model
from actcache.cache_builder.partial_load import EMBED, checkpoint_tensors, key_owner, layer_bytes, load_layers
from cluster_helpers import make_fp8_checkpoint

MIB = 2**20

# Resident memory added by loading layers [a, b) of a model and running them once, in a fresh process, split
# into file-backed pages (the weights: safetensors are memory-mapped, so a CPU stage's weights are exactly the
# pages of its own tensors, made resident when the forward touches them) and anonymous memory (copies, buffers).
# Imports, the meta skeleton and a first forward are paid before by one small layer.
_MEASURE = """
import json, sys, torch
from actcache.cache_builder.model_source import resolve_model
from actcache.cache_builder.partial_load import load_layers

def resident():
    lines = [l.split(":") for l in open("/proc/self/status") if l.startswith(("RssAnon", "RssFile"))]
    return {k: int(v.split()[0]) * 1024 for k, v in lines}

def run(loaded, first, stop):
    d = loaded.stack.layer_modules[first].self_attn.o_proj.out_features
    with torch.inference_mode():
        loaded.stack.run(torch.zeros(1, 8, d), torch.ones(1, 8, dtype=torch.long), first, stop)

model, first, stop = resolve_model(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
run(load_layers(model, range(0, 1), embed=False), 0, 1)
before = resident()
loaded = load_layers(model, range(first, stop), embed=False)
run(loaded, first, stop)
after = resident()
print(json.dumps({"file": after["RssFile"] - before["RssFile"], "anon": after["RssAnon"] - before["RssAnon"],
                  "bytes_read": loaded.bytes_read}))
"""


def test_reads_only_its_layers_and_matches_full_load(tiny_moe_dir: Path) -> None:
    model = resolve_model(tiny_moe_dir)
    loaded = load_layers(model, range(1, 3), embed=False)
    keys = checkpoint_tensors(model)
    assert set(loaded.keys_read) == {k for k in keys if key_owner(k) in (1, 2)}
    assert {key_owner(k) for k in keys} == {EMBED, None, 0, 1, 2, 3}  # norm and lm_head exist, and were not read
    full = load_model(model).model
    for index in (1, 2):
        mine, theirs = loaded.stack.layer_modules[index].state_dict(), full.layers[index].state_dict()
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)  # experts fused exactly as from_pretrained does
    assert mine["mlp.experts.gate_up_proj"].shape == (8, 64, 64)  # (experts, 2 x moe_intermediate, hidden)
    per_layer, embed = layer_bytes(model, 4)
    assert loaded.bytes_read == per_layer[1] + per_layer[2] and embed > 0


def test_fp8_checkpoint_goes_through_transformers_quantizer(tiny_moe_dir: Path, tmp_path: Path) -> None:
    """A fine-grained FP8 checkpoint takes the quantizer path of `from_pretrained` (here, without a GPU, its
    dequantize-to-bf16 fallback): per-expert FP8 weights and scales are read, dequantized and fused identically."""
    from transformers import AutoModelForCausalLM

    fp8 = make_fp8_checkpoint(tiny_moe_dir, tmp_path / "fp8")
    loaded = load_layers(resolve_model(fp8), range(2, 3), embed=False, dtype="bfloat16")
    assert any(k.endswith("experts.5.up_proj.weight_scale_inv") for k in loaded.keys_read)
    assert all(key_owner(k) == 2 for k in loaded.keys_read)
    full = AutoModelForCausalLM.from_pretrained(fp8, dtype=torch.bfloat16).model.layers[2].state_dict()
    mine = loaded.stack.layer_modules[2].state_dict()
    assert mine.keys() == full.keys() and all(torch.equal(mine[k], full[k]) for k in mine)
    assert mine["mlp.experts.gate_up_proj"].dtype == torch.bfloat16


@pytest.mark.slow
def test_stage_memory_scales_with_its_layers(smollm2_dir: Path) -> None:
    """5 vs 20 of SmolLM2's 30 layers (~14 MiB each in float32), loaded and run once: the memory added is the
    stage's own weights (4x for 4x the layers) and nothing else of size."""
    procs = {n: subprocess.Popen([sys.executable, "-c", _MEASURE, str(smollm2_dir), "5", str(5 + n)],
                                 stdout=subprocess.PIPE, text=True) for n in (5, 20)}
    measured = {n: json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for n, p in procs.items()}
    small, large = measured[5], measured[20]
    assert large["bytes_read"] == pytest.approx(4 * small["bytes_read"], rel=0.01)
    for m in (small, large):
        assert m["bytes_read"] <= m["file"] <= 1.02 * m["bytes_read"] + MIB, measured  # exactly its weights' pages
        assert m["anon"] < 32 * MIB, measured  # no copy of the weights (nor of anyone else's)
    ratio = (large["file"] + large["anon"]) / (small["file"] + small["anon"])
    assert 3.5 < ratio < 4.5, f"memory grew {ratio:.2f}x for 4x the layers: {measured}"
