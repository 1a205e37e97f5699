"""Where a model comes from: resolve `--model` to files on disk, load it, and fingerprint exactly what was loaded.

A model is given as a Hugging Face directory (config.json + *.safetensors), a `.gguf` file, or a registry name
(`configs/models/<name>.yaml`). Registry models of kind `tiny` or `gguf` are built once into
`$ACTCACHE_HOME/models/<name>` (default `~/.cache/actcache`) and reused by every later run and process.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actcache.cache_builder.model_registry import ModelSpec, list_model_names, load_model_spec
from actcache.cache_builder.weight_digest import DIGEST_CACHE, METHOD, file_digests
from actcache.storage.errors import InputError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "ModelError",
    "ResolvedModel",
    "SPEC_STAMP",
    "DTYPES",
    "actcache_home",
    "head_shape",
    "is_moe_layer",
    "model_dims",
    "load_model",
    "load_tokenizer",
    "model_fingerprint",
    "num_layers",
    "resolve_model",
    "spec_digest",
    "tokenizer_fingerprint",
    "weight_files",
]

SPEC_STAMP = "actcache_spec.json"  # written by make_model: which registry spec a built directory came from
DTYPES = ("float32", "bfloat16", "float16")
# config.json keys that say who wrote the file, not what the model computes
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "_model_name_or_path", "_commit_hash")


class ModelError(InputError):
    """A model that cannot be resolved, built or loaded; the message names the fix."""


@dataclass(frozen=True)
class ResolvedModel:
    """A model on disk: `path` holds config.json + safetensors, or the GGUF file `gguf_file`; `name` if registry."""

    path: Path
    gguf_file: str | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "gguf_file": self.gguf_file, "name": self.name}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResolvedModel:
        return cls(path=Path(data["path"]), gguf_file=data.get("gguf_file"), name=data.get("name"))


def actcache_home() -> Path:
    """Root of built models (and other per-user state): `$ACTCACHE_HOME`, default `~/.cache/actcache`."""
    return Path(os.environ.get("ACTCACHE_HOME", "~/.cache/actcache")).expanduser()


def resolve_model(spec: str | Path) -> ResolvedModel:
    """Turn a model directory, a `.gguf` file or a registry name into files on disk, building registry models once."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return _resolve_dir(path.resolve())
    if path.is_file() and path.suffix == ".gguf":
        path = path.resolve()
        return ResolvedModel(path=path.parent, gguf_file=path.name)
    if str(spec) in list_model_names():
        return _materialise(load_model_spec(str(spec)))
    raise ModelError(
        f"cannot use model {str(spec)!r}: give a model directory (config.json + *.safetensors), a .gguf file, "
        f"or a registry name ({', '.join(list_model_names())})"
    )


def _resolve_dir(path: Path) -> ResolvedModel:
    if not (path / "config.json").is_file():
        raise ModelError(
            f"{path} has no config.json: give a Hugging Face model directory (config.json + *.safetensors), "
            f"a .gguf file or a registry name"
        )
    if not any(path.glob("*.safetensors")):
        raise ModelError(
            f"{path} has config.json but no *.safetensors weights: re-save it with "
            f"model.save_pretrained(dir, safe_serialization=True) or pass its .gguf file"
        )
    return ResolvedModel(path=path)


def spec_digest(spec: ModelSpec) -> str:
    """sha256 of everything in a registry spec that changes the built model: a changed YAML means a rebuild."""
    fields = {k: getattr(spec, k) for k in ("name", "kind", "config", "dtype", "seed", "package", "file")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _materialise(spec: ModelSpec) -> ResolvedModel:
    """Build a registry model into the actcache home once; a lock makes concurrent first uses build it only once."""
    if spec.kind == "reference":
        raise ModelError(
            f"{spec.name} is a reference config only; cannot be built: use it with `plan`, or pick one of "
            f"the buildable models ({', '.join(_buildable_names())})"
        )
    target = actcache_home() / "models" / spec.name
    if not _is_current(target, spec):
        with _file_lock(target.parent / f".{spec.name}.lock"):
            if not _is_current(target, spec):
                from actcache.cache_builder.make_model import make_model

                _discard(target)
                make_model(spec.name, target)
    return ResolvedModel(path=target, name=spec.name)


def _buildable_names() -> list[str]:
    return [n for n in list_model_names() if load_model_spec(n).kind != "reference"]


def _is_current(target: Path, spec: ModelSpec) -> bool:
    stamp = target / SPEC_STAMP
    return stamp.is_file() and json.loads(stamp.read_text()).get("spec_digest") == spec_digest(spec)


def _discard(target: Path) -> None:
    """Move a stale build out of the way first (rename is atomic), then delete it."""
    if target.exists():
        trash = target.with_name(f".{target.name}.stale-{os.getpid()}")
        target.rename(trash)
        shutil.rmtree(trash)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_tokenizer(m: ResolvedModel) -> PreTrainedTokenizerBase:
    """The model's own tokenizer, from its directory or GGUF file."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(m.path, gguf_file=m.gguf_file)


def load_model(m: ResolvedModel, dtype: str = "float32", device: str = "cpu") -> PreTrainedModel:
    """The whole model on `device` (a resolved torch device: `storage.devices.resolve_device`) in `dtype`, eval
    mode, no gradients, SDPA attention (the capture reference). Weights load straight onto the device."""
    import torch
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise ModelError(f"unsupported dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    model = AutoModelForCausalLM.from_pretrained(
        m.path, gguf_file=m.gguf_file, dtype=getattr(torch, dtype), attn_implementation="sdpa",
        device_map={"": device},
    )
    model.eval()
    model.requires_grad_(False)
    return model


def weight_files(m: ResolvedModel) -> list[str]:
    """Absolute paths of the safetensors files, in index order: solvers read single tensors (W_O, W_down) from them."""
    if m.gguf_file is not None:
        raise ModelError(
            f"{m.gguf_file} is a GGUF file, not safetensors: convert it with `actcache make-model` or "
            f"model.save_pretrained(dir), and use that directory"
        )
    index = m.path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        names = sorted(p.name for p in m.path.glob("*.safetensors"))
    return [str((m.path / n).resolve()) for n in names]


def model_fingerprint(m: ResolvedModel, dtype: str) -> dict[str, Any]:
    """What the model's activations depend on, as JSON: architecture, canonical config, compute dtype,
    quantization config, and a digest of every byte of each weight file (`weight_digest.METHOD`; hashed once per
    file version, remembered under `$ACTCACHE_HOME`), so an edited tensor saved in place is a different model.

    The digests never name directories, so one model copied to two places fingerprints the same.
    """
    config = _canonical(_config_dict(m))
    files = [m.path / m.gguf_file] if m.gguf_file is not None else [Path(p) for p in weight_files(m)]
    digests = file_digests(files, actcache_home() / DIGEST_CACHE)
    return {
        "architecture": (config.get("architectures") or [config.get("model_type")])[0],
        "config": config,
        "dtype": dtype,
        "quantization": config.get("quantization_config"),
        "weights": {p.name: {"size": p.stat().st_size, "sha256": digests[p]} for p in files},
        "weights_digest_method": METHOD,
    }


def _config_dict(m: ResolvedModel) -> dict[str, Any]:
    """config.json as saved, or for a GGUF the same non-default fields plus the quantization transformers records."""
    if m.gguf_file is None:
        data: dict[str, Any] = json.loads((m.path / "config.json").read_text())
    else:
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        config = AutoConfig.from_pretrained(m.path, gguf_file=m.gguf_file)
        data = json.loads(config.to_json_string(use_diff=True))
        data["architectures"] = data.get("architectures") or [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config.model_type]]
        data["quantization_config"] = {"quant_method": "gguf"}
    return {k: v for k, v in data.items() if k not in _VOLATILE_CONFIG_KEYS}


def _canonical(value: Any) -> Any:
    """Sorted keys all the way down, so equal configs compare and serialise equal."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """What token ids depend on: the backend tokenizer JSON (vocab, merges, normaliser, templates), special tokens
    and the tokenizer class."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelError(f"{type(tokenizer).__name__} has no fast backend: load the model's tokenizer.json instead")
    return {
        "class": type(tokenizer).__name__,
        "backend_sha256": hashlib.sha256(backend.to_str().encode()).hexdigest(),
        "special_tokens": _canonical(
            {k: str(v) for k, v in tokenizer.special_tokens_map.items()}
            | {f"{k}_id": getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "pad", "unk")}
        ),
    }


def _config_get(config: PretrainedConfig | Mapping[str, Any], key: str) -> Any:
    if isinstance(config, Mapping):
        return config.get(key)
    return getattr(config, key, None)


def num_layers(config: PretrainedConfig | Mapping[str, Any]) -> int:
    """Number of decoder layers (from a transformers config or a config.json mapping)."""
    return int(_config_get(config, "num_hidden_layers"))


def head_shape(config: PretrainedConfig | Mapping[str, Any]) -> tuple[int, int]:
    """(n_heads, head_dim) of `attn_z`; head_dim defaults to hidden_size // n_heads when the config omits it."""
    n_heads = int(_config_get(config, "num_attention_heads"))
    head_dim = _config_get(config, "head_dim") or int(_config_get(config, "hidden_size")) // n_heads
    return n_heads, int(head_dim)


def model_dims(config: PretrainedConfig | Mapping[str, Any]) -> dict[str, int]:
    """The sizes hook widths are made of (storage.hook_points.MODEL_DIMS): hidden_size, n_heads * head_dim, the
    dense MLP's intermediate_size and the routed experts per token (0 without experts)."""
    n_heads, head_dim = head_shape(config)
    experts = _config_get(config, "num_experts") or _config_get(config, "num_local_experts") or 0
    return {"d_model": int(_config_get(config, "hidden_size")), "head_feature": n_heads * head_dim,
            "d_ff": int(_config_get(config, "intermediate_size") or 0),
            "top_k": int(_config_get(config, "num_experts_per_tok") or 0) if experts else 0}


def is_moe_layer(config: PretrainedConfig | Mapping[str, Any], layer: int) -> bool:
    """Whether decoder layer `layer` has routed experts (Qwen-MoE's decoder_sparse_step / mlp_only_layers rule;
    every layer of Mixtral-style models, which have neither)."""
    experts = _config_get(config, "num_experts") or _config_get(config, "num_local_experts") or 0
    step = int(_config_get(config, "decoder_sparse_step") or 1)
    return bool(experts) and layer not in (_config_get(config, "mlp_only_layers") or ()) and (layer + 1) % step == 0
