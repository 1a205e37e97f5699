"""Turn a model config and a cluster description into a capture plan, or refuse one that cannot run.

A plan is R data-parallel replicas of an S-stage pipeline, one stage per GPU. Only layers up to the deepest
captured one are loaded; stage 0 also holds the embedding; nobody holds the final norm or lm_head. The plan says
what each GPU holds (weights, working memory, headroom), how many bytes every token adds to the cache, what a
corpus costs on disk and which write bandwidth keeps up with the GPUs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from actcache.cache_builder.model_registry import ModelSpec
from actcache.cluster._plan_error import PlanError
from actcache.cluster.partition import partition_layers
from actcache.cluster.plan_report import format_plan, layer_span
from actcache.cluster.stage_memory import HEADROOM_FRACTION, WorkingMemory, stage_working_memory
from actcache.cluster.volume import compression_ratio, hook_bytes
from actcache.cluster.weight_bytes import (
    ModelShape,
    WeightFormat,
    dtype_bytes,
    embedding_tensors,
    layer_tensors,
    model_tensors,
    parameter_count,
    tensors_bytes,
)
from actcache.storage.errors import InputError
from actcache.storage.hook_points import check_layer_kinds, expand_hooks
from actcache.storage.store_modes import STORE_MODES

__all__ = [
    "CaptureRequest",
    "ClusterSpec",
    "Plan",
    "PlanError",
    "StagePlan",
    "format_plan",
    "partition_layers",
    "plan_build",
]

GIB = 2**30
DEFAULT_MICRO_BATCH_TOKENS = 8192


@dataclass(frozen=True)
class ClusterSpec:
    """The GPUs available, and optionally how to lay the pipeline on them (default: one stage per GPU)."""

    nodes: int
    gpus_per_node: int
    gpu_mem_gib: float
    stages: int | None = None
    replicas: int | None = None
    headroom_fraction: float = HEADROOM_FRACTION

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def gpu_bytes(self) -> int:
        return int(self.gpu_mem_gib * GIB)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClusterSpec:
        """Read a cluster description (e.g. `configs/clusters/*.yaml`)."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise PlanError(f"unknown cluster field(s) {unknown}: use {sorted(known)}")
        missing = [k for k in ("nodes", "gpus_per_node", "gpu_mem_gib") if k not in data]
        if missing:
            raise PlanError(f"cluster description lacks {missing}")
        return cls(**data)


@dataclass(frozen=True)
class CaptureRequest:
    """What to capture and how much: layers and hooks, corpus size, target throughput, micro-batch, dtype."""

    layers: tuple[int, ...]
    hooks: tuple[str, ...] = ("resid_post",)
    tokens: int | None = None
    tokens_per_s: float | None = None
    micro_batch_tokens: int = DEFAULT_MICRO_BATCH_TOKENS
    capture_dtype: str | None = None
    store_as: str = "exact"  # how the store keeps values (storage/lossy.py): sizes the store and its bandwidth

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "layers": list(self.layers), "hooks": list(self.hooks)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaptureRequest:
        return cls(**{**data, "layers": tuple(data["layers"]), "hooks": tuple(data.get("hooks", cls.hooks))})


@dataclass(frozen=True)
class StagePlan:
    """One pipeline stage on one GPU."""

    index: int
    layers: range
    weight_bytes: int
    working: WorkingMemory
    headroom_bytes: int
    gpu_bytes: int
    captures: tuple[tuple[str, int], ...]
    capture_bytes_per_token: int

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.working.total + self.headroom_bytes

    @property
    def free_bytes(self) -> int:
        return self.gpu_bytes - self.total_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "first_layer": self.layers.start,
            "last_layer": self.layers.stop - 1,
            "weight_bytes": self.weight_bytes,
            "working_bytes": self.working.to_dict(),
            "headroom_bytes": self.headroom_bytes,
            "total_bytes": self.total_bytes,
            "free_bytes": self.free_bytes,
            "captures": [{"hook": h, "layer": layer} for h, layer in self.captures],
            "capture_bytes_per_token": self.capture_bytes_per_token,
        }


@dataclass(frozen=True)
class Plan:
    """A capture plan that fits: R replicas of an S-stage pipeline, and the volume it writes."""

    model_name: str
    hf_id: str | None
    num_layers: int
    total_params: int
    model_weight_bytes: int
    weight_format: str
    cluster: ClusterSpec
    capture: CaptureRequest
    n_stages: int
    n_replicas: int
    stages: tuple[StagePlan, ...]
    bytes_per_token_by_hook: dict[str, int]
    interstage_bytes_per_token: int
    compression_ratio: float
    notes: tuple[str, ...] = field(default=())

    @property
    def layers_loaded(self) -> int:
        """Layers 0..layers_loaded-1 are loaded; the rest are never read."""
        return self.stages[-1].layers.stop

    @property
    def bytes_per_token(self) -> int:
        return sum(self.bytes_per_token_by_hook.values())

    @property
    def store_bytes(self) -> int | None:
        return None if self.capture.tokens is None else self.capture.tokens * self.bytes_per_token

    @property
    def write_bytes_per_s(self) -> float | None:
        return None if self.capture.tokens_per_s is None else self.capture.tokens_per_s * self.bytes_per_token

    def to_dict(self) -> dict[str, Any]:
        ratio = self.compression_ratio
        store, rate = self.store_bytes, self.write_bytes_per_s
        tokens, tps = self.capture.tokens, self.capture.tokens_per_s
        return {
            "model": {"name": self.model_name, "hf_id": self.hf_id, "num_layers": self.num_layers,
                      "total_params": self.total_params, "weight_bytes": self.model_weight_bytes,
                      "weight_format": self.weight_format},
            "cluster": self.cluster.to_dict(),
            "capture": self.capture.to_dict(),
            "n_stages": self.n_stages,
            "n_replicas": self.n_replicas,
            "layers_loaded": self.layers_loaded,
            "stages": [s.to_dict() for s in self.stages],
            "bytes_per_token": self.bytes_per_token,
            "bytes_per_token_by_hook": dict(self.bytes_per_token_by_hook),
            "interstage_bytes_per_token": self.interstage_bytes_per_token,
            "compression_ratio": ratio,
            "store_bytes": None if store is None else {"raw": store, "compressed": round(store / ratio)},
            "write_bytes_per_s": None if rate is None else {"raw": rate, "compressed": rate / ratio},
            "duration_s": None if tokens is None or tps is None else tokens / tps,
            "notes": list(self.notes),
        }


def plan_build(spec: ModelSpec, cluster: ClusterSpec, capture: CaptureRequest) -> Plan:
    """Partition the loaded layers over the cluster and size memory and volume; PlanError if it cannot run."""
    shape = ModelShape.from_config(spec.config)
    fmt = WeightFormat.from_spec(spec)
    capture = _checked_capture(capture, shape, spec)
    n_stages, n_replicas = _layout(cluster)
    n_load = max(capture.layers) + 1
    if n_stages > n_load:
        fit = max(d for d in _divisors(cluster.gpus) if d <= n_load)
        raise PlanError(
            f"{n_stages} stages but only {n_load} layers to load (0..{n_load - 1}): "
            f"use --stages {fit} --replicas {cluster.gpus // fit}"
        )
    stages = _stages(shape, fmt, cluster, capture, n_stages)
    over = [s for s in stages if s.free_bytes < 0]
    if over:
        raise PlanError(_refusal(over[0], shape, fmt, cluster, capture))
    act_bytes = dtype_bytes(spec.dtype)
    cap_dtype = capture.capture_dtype or spec.dtype
    by_hook = {h: len(capture.layers) * hook_bytes(h, shape, cap_dtype, capture.store_as) for h in capture.hooks}
    return Plan(
        model_name=spec.name,
        hf_id=spec.hf_id,
        num_layers=shape.num_layers,
        total_params=parameter_count(shape),
        model_weight_bytes=tensors_bytes(model_tensors(shape), fmt),
        weight_format=fmt.describe(),
        cluster=cluster,
        capture=capture,
        n_stages=n_stages,
        n_replicas=n_replicas,
        stages=tuple(stages),
        bytes_per_token_by_hook=by_hook,
        interstage_bytes_per_token=shape.hidden_size * act_bytes,
        compression_ratio=compression_ratio(cap_dtype, capture.store_as),
        notes=_notes(shape, fmt, cluster, capture, n_stages),
    )


def _checked_capture(capture: CaptureRequest, shape: ModelShape, spec: ModelSpec) -> CaptureRequest:
    """Validate layers, hooks and sizes; sort and dedupe; resolve the capture dtype to the model's by default."""
    if not capture.layers:
        raise PlanError("no layers to capture: give --layers, e.g. --layers 8,15")
    bad = [layer for layer in capture.layers if not 0 <= layer < shape.num_layers]
    if bad:
        raise PlanError(f"layer(s) {bad} out of range: {spec.name} has layers 0..{shape.num_layers - 1}")
    if not capture.hooks:
        raise PlanError("no hooks to capture: give --hooks, e.g. --hooks resid_post,attn_z")
    try:
        hooks = expand_hooks(capture.hooks)  # `router` -> router_experts, router_weights
        check_layer_kinds(hooks, capture.layers, shape.is_moe_layer)
    except InputError as error:
        raise PlanError(str(error)) from None
    dtype = capture.capture_dtype or spec.dtype
    dtype_bytes(dtype)
    if capture.store_as not in STORE_MODES:
        raise PlanError(f"--store-as {capture.store_as!r}: use one of {', '.join(STORE_MODES)}")
    for hook in hooks:
        hook_bytes(hook, shape, dtype)
    if capture.micro_batch_tokens < 1:
        raise PlanError(f"--micro-batch-tokens must be at least 1, not {capture.micro_batch_tokens}")
    if (capture.tokens is not None and capture.tokens < 0) or (capture.tokens_per_s or 0) < 0:
        raise PlanError("--tokens and --tokens-per-s must not be negative")
    return CaptureRequest(
        layers=tuple(sorted(set(capture.layers))),
        hooks=hooks,
        tokens=capture.tokens,
        tokens_per_s=capture.tokens_per_s,
        micro_batch_tokens=capture.micro_batch_tokens,
        capture_dtype=dtype,
        store_as=capture.store_as,
    )


def _layout(cluster: ClusterSpec) -> tuple[int, int]:
    """(stages, replicas) with stages x replicas == GPUs; one stage per GPU unless told otherwise."""
    gpus = cluster.gpus
    if cluster.nodes < 1 or cluster.gpus_per_node < 1:
        raise PlanError(f"{cluster.nodes} node(s) x {cluster.gpus_per_node} GPU(s) = {gpus} GPUs: "
                        "give --nodes and --gpus-per-node of at least 1")
    if cluster.gpu_mem_gib <= 0:
        raise PlanError(f"GPU memory {cluster.gpu_mem_gib} GiB: give --gpu-mem-gib, e.g. 80")
    stages, replicas = cluster.stages, cluster.replicas
    for name, value in (("--stages", stages), ("--replicas", replicas)):
        if value is not None and value < 1:
            raise PlanError(f"{name} {value}: must be at least 1")
    if stages is None:
        replicas = replicas or 1
        if gpus % replicas:
            raise PlanError(f"--replicas {replicas} does not divide {gpus} GPUs: use one of {_divisors(gpus)}")
        return gpus // replicas, replicas
    if replicas is None:
        if gpus % stages:
            raise PlanError(f"--stages {stages} does not divide {gpus} GPUs: use one of {_divisors(gpus)}")
        return stages, gpus // stages
    if stages * replicas != gpus:
        raise PlanError(f"--stages {stages} x --replicas {replicas} = {stages * replicas} GPUs, "
                        f"but the cluster has {gpus}: make stages x replicas = {gpus}")
    return stages, replicas


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _stages(
    shape: ModelShape, fmt: WeightFormat, cluster: ClusterSpec, capture: CaptureRequest, n_stages: int
) -> list[StagePlan]:
    """Partition layers 0..deepest by weight bytes and size every stage's memory."""
    n_load = max(capture.layers) + 1
    layer_bytes = [tensors_bytes(layer_tensors(shape, i), fmt) for i in range(n_load)]
    embed_bytes = tensors_bytes(embedding_tensors(shape), fmt)
    cap_dtype = capture.capture_dtype or fmt.dtype
    act_bytes = dtype_bytes(fmt.dtype)
    headroom = int(cluster.headroom_fraction * cluster.gpu_bytes)
    stages = []
    for index, layers in enumerate(partition_layers(layer_bytes, n_stages, embed_bytes)):
        captures = tuple((h, layer) for layer in capture.layers if layer in layers for h in capture.hooks)
        per_token = sum(hook_bytes(h, shape, cap_dtype) for h, _ in captures)
        working = stage_working_memory(shape, layers, act_bytes=act_bytes,
                                       micro_batch_tokens=capture.micro_batch_tokens,
                                       capture_bytes_per_token=per_token)
        weights = sum(layer_bytes[i] for i in layers) + (embed_bytes if index == 0 else 0)
        stages.append(StagePlan(index, layers, weights, working, headroom, cluster.gpu_bytes, captures, per_token))
    return stages


def _min_fitting_stages(
    shape: ModelShape, fmt: WeightFormat, cluster: ClusterSpec, capture: CaptureRequest
) -> int | None:
    """Fewest stages (GPUs per pipeline) whose every stage fits, or None if even one layer per GPU does not."""
    for n_stages in range(1, max(capture.layers) + 2):
        if all(s.free_bytes >= 0 for s in _stages(shape, fmt, cluster, capture, n_stages)):
            return n_stages
    return None


def _refusal(stage: StagePlan, shape: ModelShape, fmt: WeightFormat, cluster: ClusterSpec,
             capture: CaptureRequest) -> str:
    """One line: which stage overflows by how much, and what to change."""
    need = (f"stage {stage.index} ({layer_span(stage.layers)}) needs "
            f"{stage.total_bytes / GIB:.1f} GiB (weights {stage.weight_bytes / GIB:.1f} + working "
            f"{stage.working.total / GIB:.1f} + headroom {stage.headroom_bytes / GIB:.1f}) but a GPU has "
            f"{cluster.gpu_mem_gib:g} GiB")
    minimum = _min_fitting_stages(shape, fmt, cluster, capture)
    if minimum is None:
        return (f"{need}, and even one layer per GPU does not fit: lower --micro-batch-tokens "
                f"(now {capture.micro_batch_tokens}) or use GPUs with more memory")
    if minimum > cluster.gpus:
        return (f"{need}: a pipeline needs at least {minimum} GPUs of {cluster.gpu_mem_gib:g} GiB and the cluster "
                f"has {cluster.gpus}; add GPUs (--nodes/--gpus-per-node), use larger GPUs, or capture shallower "
                f"layers")
    fit = min(d for d in _divisors(cluster.gpus) if d >= minimum)
    return f"{need}: use --stages {fit} --replicas {cluster.gpus // fit}"


def _notes(shape: ModelShape, fmt: WeightFormat, cluster: ClusterSpec, capture: CaptureRequest,
           n_stages: int) -> tuple[str, ...]:
    deepest = max(capture.layers)
    if deepest < shape.num_layers - 1:
        skipped = (f"{layer_span(range(deepest + 1, shape.num_layers))}, the final norm and lm_head are not "
                   f"loaded: capture stops at layer {deepest}")
    else:
        skipped = "the final norm and lm_head are not loaded: capture stops at the last layer"
    notes = [skipped, f"weights: {fmt.describe()}"]
    if fmt.block is not None:
        notes.append("FP8 weights are assumed to stay FP8 on the GPU (FP8 kernels, Hopper/Ada or newer); "
                     "dequantizing them to bfloat16 would double weight memory")
    notes.append(f"working memory: one micro-batch of {capture.micro_batch_tokens} tokens, no KV cache, "
                 f"SDPA/flash attention; headroom {cluster.headroom_fraction:.0%} of each GPU "
                 f"for CUDA context, workspaces and fragmentation")
    minimum = _min_fitting_stages(shape, fmt, cluster, capture) if n_stages > 1 else None
    if minimum is not None and minimum < n_stages:
        fit = min(d for d in _divisors(cluster.gpus) if d >= minimum)
        if fit < n_stages:
            notes.append(f"the loaded layers fit in {minimum} stage(s): --stages {fit} --replicas "
                         f"{cluster.gpus // fit} would run more replicas with a shorter pipeline")
    return tuple(notes)
