"""Weight bytes and parameter counts of a decoder-only model, computed from its config.json fields alone.

The planner must size a 235B model without its weights, so every tensor is derived from the config: per layer
attention (q/k/v/o with GQA and head_dim, optional q/k/v biases and q/k norms), dense MLP or MoE (experts x 3
linears + router, optional shared expert), two norms; plus embeddings, final norm and lm_head outside the layers.

Storage rule (the published FP8 checkpoints' `modules_to_not_convert`): only decoder-layer linear weights are
stored in `weight_dtype`; embeddings, norms, biases, routers and lm_head stay in `dtype`. Fine-grained FP8 adds one
scale per `weight_block_size` block of each quantized linear, counted as float32 (`FP8_SCALE_BYTES`, an upper
bound: 4 bytes per 128x128 block is +0.02% of that linear's bytes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from actcache.cache_builder.model_registry import ModelSpec
from actcache.cache_builder.model_source import is_moe_layer
from actcache.cluster._plan_error import PlanError

__all__ = [
    "DTYPE_BYTES",
    "FP8_SCALE_BYTES",
    "ModelShape",
    "Tensor",
    "WeightFormat",
    "dtype_bytes",
    "embedding_tensors",
    "head_tensors",
    "layer_tensors",
    "model_tensors",
    "parameter_count",
    "tensors_bytes",
]

DTYPE_BYTES = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "fp8": 1,
    "int8": 1,
}
FP8_SCALE_BYTES = 4

# Architecture facts that config.json does not spell out: Qwen2 always has q/k/v biases, Qwen3 normalises q and k.
_QKV_BIAS_BY_DEFAULT = {"qwen2", "qwen2_moe"}
_QK_NORM_TYPES = {"qwen3", "qwen3_moe"}
# Config keys of attention/MLP designs this weight model does not describe (MLA, linear attention).
_UNSUPPORTED_KEYS = ("kv_lora_rank", "q_lora_rank", "linear_num_key_heads", "first_k_dense_replace")


def dtype_bytes(name: str) -> int:
    """Bytes per element of a dtype name such as `bfloat16` or `float8_e4m3fn`."""
    if name not in DTYPE_BYTES:
        raise PlanError(f"unknown dtype {name!r}: use one of {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[name]


@dataclass(frozen=True)
class ModelShape:
    """The config.json fields that decide tensor shapes."""

    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    intermediate_size: int
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    mlp_bias: bool = False
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """Read the shape fields, with the defaults transformers applies when a field is absent."""
        unsupported = [k for k in _UNSUPPORTED_KEYS if config.get(k)]
        if unsupported:
            raise PlanError(f"config uses {unsupported}, which the planner's weight model does not cover yet")
        missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                               "intermediate_size") if k not in config]
        if missing:
            raise PlanError(f"model config lacks {missing}: copy them from the model's config.json")
        model_type = str(config.get("model_type", ""))
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        num_experts = int(config.get("num_experts") or config.get("num_local_experts") or 0)
        return cls(
            model_type=model_type,
            hidden_size=hidden,
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            vocab_size=int(config["vocab_size"]),
            intermediate_size=int(config["intermediate_size"]),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=bool(config.get("attention_bias", model_type in _QKV_BIAS_BY_DEFAULT)),
            qk_norm=model_type in _QK_NORM_TYPES,
            mlp_bias=bool(config.get("mlp_bias", False)),
            num_experts=num_experts,
            experts_per_token=int(config.get("num_experts_per_tok") or 0) if num_experts else 0,
            moe_intermediate_size=int(config.get("moe_intermediate_size") or config["intermediate_size"]),
            shared_expert_intermediate_size=int(config.get("shared_expert_intermediate_size") or 0),
            decoder_sparse_step=int(config.get("decoder_sparse_step") or 1),
            mlp_only_layers=tuple(int(i) for i in config.get("mlp_only_layers") or ()),
        )

    def is_moe_layer(self, layer: int) -> bool:
        """Whether decoder layer `layer` has routed experts: the builder's own rule, so plan and build agree."""
        fields = {"num_experts": self.num_experts, "mlp_only_layers": self.mlp_only_layers,
                  "decoder_sparse_step": self.decoder_sparse_step}
        return is_moe_layer(fields, layer)


@dataclass(frozen=True)
class Tensor:
    """`count` tensors of one `shape`; `quantized` marks decoder-layer linear weights (stored in weight_dtype)."""

    name: str
    shape: tuple[int, ...]
    count: int = 1
    quantized: bool = False

    @property
    def numel(self) -> int:
        return self.count * math.prod(self.shape)


@dataclass(frozen=True)
class WeightFormat:
    """How weights are stored: `dtype` for everything, except quantized linears in `weight_dtype` (+ scales)."""

    dtype: str
    weight_dtype: str
    block: tuple[int, int] | None = None

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> WeightFormat:
        """Storage dtypes from the registry entry, block size from its `quantization_config`."""
        weight_dtype = spec.weight_dtype or spec.dtype
        for name in (spec.dtype, weight_dtype):
            dtype_bytes(name)  # reject unknown names before any arithmetic
        block = (spec.config.get("quantization_config") or {}).get("weight_block_size")
        if not block or not weight_dtype.startswith(("float8", "fp8")):
            return cls(spec.dtype, weight_dtype)
        if len(block) != 2:
            raise PlanError(f"weight_block_size {block}: expected [rows, cols] such as [128, 128]")
        return cls(spec.dtype, weight_dtype, (int(block[0]), int(block[1])))

    def tensor_bytes(self, tensor: Tensor) -> int:
        """Stored bytes of `tensor`, block scales included."""
        if not tensor.quantized:
            return tensor.numel * dtype_bytes(self.dtype)
        nbytes = tensor.numel * dtype_bytes(self.weight_dtype)
        if self.block is not None:
            out_features, in_features = tensor.shape
            blocks = math.ceil(out_features / self.block[0]) * math.ceil(in_features / self.block[1])
            nbytes += tensor.count * blocks * FP8_SCALE_BYTES
        return nbytes

    def describe(self) -> str:
        """One line saying what is stored how, for the plan printout."""
        if self.weight_dtype == self.dtype:
            return f"all weights {self.dtype}"
        scales = ""
        if self.block is not None:
            scales = (f" + one float32 scale per {self.block[0]}x{self.block[1]} block (counted; "
                      f"+{FP8_SCALE_BYTES / (self.block[0] * self.block[1]):.3%})")
        return (f"decoder-layer linears {self.weight_dtype}{scales}; "
                f"embeddings, norms, biases, routers in {self.dtype}")


def _linear(name: str, out_features: int, in_features: int, count: int = 1, bias: bool = False) -> list[Tensor]:
    weight = Tensor(f"{name}.weight", (out_features, in_features), count, quantized=True)
    return [weight, Tensor(f"{name}.bias", (out_features,), count)] if bias else [weight]


def layer_tensors(shape: ModelShape, layer: int) -> list[Tensor]:
    """Every tensor of decoder layer `layer`."""
    d, hd = shape.hidden_size, shape.head_dim
    q_width, kv_width = shape.num_heads * hd, shape.num_kv_heads * hd
    tensors = [Tensor("input_layernorm.weight", (d,)), Tensor("post_attention_layernorm.weight", (d,))]
    tensors += _linear("self_attn.q_proj", q_width, d, bias=shape.qkv_bias)
    tensors += _linear("self_attn.k_proj", kv_width, d, bias=shape.qkv_bias)
    tensors += _linear("self_attn.v_proj", kv_width, d, bias=shape.qkv_bias)
    tensors += _linear("self_attn.o_proj", d, q_width)
    if shape.qk_norm:
        tensors += [Tensor("self_attn.q_norm.weight", (hd,)), Tensor("self_attn.k_norm.weight", (hd,))]
    if not shape.is_moe_layer(layer):
        return tensors + _mlp("mlp", shape.intermediate_size, d, bias=shape.mlp_bias)
    tensors.append(Tensor("mlp.gate.weight", (shape.num_experts, d)))  # router: kept in dtype
    tensors += _mlp("mlp.experts", shape.moe_intermediate_size, d, count=shape.num_experts)
    if shape.shared_expert_intermediate_size:
        tensors += _mlp("mlp.shared_expert", shape.shared_expert_intermediate_size, d)
        tensors.append(Tensor("mlp.shared_expert_gate.weight", (1, d)))
    return tensors


def _mlp(name: str, inter: int, d: int, count: int = 1, bias: bool = False) -> list[Tensor]:
    """SwiGLU MLP: gate and up (inter x d), down (d x inter)."""
    return (_linear(f"{name}.gate_proj", inter, d, count, bias) + _linear(f"{name}.up_proj", inter, d, count, bias)
            + _linear(f"{name}.down_proj", d, inter, count, bias))


def embedding_tensors(shape: ModelShape) -> list[Tensor]:
    """What stage 0 holds besides its layers."""
    return [Tensor("embed_tokens.weight", (shape.vocab_size, shape.hidden_size))]


def head_tensors(shape: ModelShape) -> list[Tensor]:
    """Final norm and lm_head: part of the model, never loaded by a capture pipeline."""
    norm = [Tensor("norm.weight", (shape.hidden_size,))]
    if shape.tie_word_embeddings:
        return norm
    return norm + [Tensor("lm_head.weight", (shape.vocab_size, shape.hidden_size))]


def tensors_bytes(tensors: list[Tensor], fmt: WeightFormat) -> int:
    """Stored bytes of a list of tensors."""
    return sum(fmt.tensor_bytes(t) for t in tensors)


def model_tensors(shape: ModelShape) -> list[Tensor]:
    """Every tensor of the whole model (tied embeddings once)."""
    layers = [t for layer in range(shape.num_layers) for t in layer_tensors(shape, layer)]
    return embedding_tensors(shape) + layers + head_tensors(shape)


def parameter_count(shape: ModelShape) -> int:
    """Total parameters of the whole model, to check against published totals."""
    return sum(t.numel for t in model_tensors(shape))
