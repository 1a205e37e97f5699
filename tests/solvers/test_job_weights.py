"""W_O / W_down straight from safetensors: found by name in any shard, block-scaled FP8 dequantised, MoE and
missing files reported as null with the reason."""

from __future__ import annotations

import torch
from actcache.solvers.layer_weights import LayerWeights
from safetensors.torch import save_file


def test_reads_only_the_named_tensors_across_shards(tmp_path):
    w_o, w_down = torch.randn(8, 12), torch.randn(8, 20)
    save_file({"model.layers.2.self_attn.o_proj.weight": w_o}, str(tmp_path / "a.safetensors"))
    save_file({"model.layers.2.mlp.down_proj.weight": w_down,
               "model.layers.3.mlp.experts.0.down_proj.weight": torch.randn(8, 4)}, str(tmp_path / "b.safetensors"))
    weights = LayerWeights({"path": str(tmp_path), "weight_files": [str(tmp_path / f) for f in ("a.safetensors",
                                                                                               "b.safetensors")]})
    assert torch.equal(weights.o_proj(2).tensor, w_o) and torch.equal(weights.down_proj(2).tensor, w_down)
    moe = weights.down_proj(3)
    assert moe.tensor is None and moe.reason == "layer 3 is a MoE layer: no dense W_down"
    assert "no tensor layers.5.self_attn.o_proj.weight" in weights.o_proj(5).reason


def test_fp8_blocks_are_dequantised(tmp_path):
    weight = (torch.rand(256, 130) - 0.5).to(torch.float8_e4m3fn)
    scale_inv = torch.tensor([[2.0, 0.5], [4.0, 1.0]])  # 128 x 128 blocks, the last ones partial
    save_file({"layers.0.mlp.down_proj.weight": weight, "layers.0.mlp.down_proj.weight_scale_inv": scale_inv},
              str(tmp_path / "m.safetensors"))
    got = LayerWeights({"weight_files": [str(tmp_path / "m.safetensors")]}).down_proj(0).tensor
    expected = weight.float()
    expected[:128, :128] *= 2.0
    expected[:128, 128:] *= 0.5
    expected[128:, :128] *= 4.0
    assert torch.equal(got, expected)


def test_missing_sources_give_null_with_the_reason(tmp_path):
    assert "no model source" in LayerWeights(None).o_proj(0).reason
    assert "GGUF" in LayerWeights({"path": "m", "gguf_file": "m.gguf", "weight_files": []}).down_proj(0).reason
    gone = LayerWeights({"path": str(tmp_path), "weight_files": [str(tmp_path / "gone.safetensors")]}).o_proj(0)
    assert gone.tensor is None and "gone.safetensors is missing" in gone.reason
