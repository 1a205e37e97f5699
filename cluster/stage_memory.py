"""GPU working memory of one pipeline stage for one micro-batch, beside its weights.

A capture forward keeps no KV cache (use_cache=False) and frees each layer's intermediates before the next layer,
so the peak is the largest single layer's transient plus what lives across layers: the residual stream, the
hidden states in flight between stages, and the captured tensors waiting for their copy to the host. Attention is
assumed to run through SDPA/flash kernels (no tokens x tokens score matrix). A fixed fraction of the GPU is kept
free for the CUDA context, cuBLAS/NCCL workspaces and allocator fragmentation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from actcache.cluster.weight_bytes import ModelShape

__all__ = [
    "HEADROOM_FRACTION",
    "IN_FLIGHT_MICRO_BATCHES",
    "WorkingMemory",
    "layer_peak_bytes_per_token",
    "stage_working_memory",
]

HEADROOM_FRACTION = 0.10
IN_FLIGHT_MICRO_BATCHES = 2  # one being computed, one arriving (or leaving) over the inter-stage link
_ROUTER_BYTES = 4  # router logits and probabilities are float32
_TOKEN_ID_BYTES = 8  # int64 input ids on stage 0


def layer_peak_bytes_per_token(shape: ModelShape, layer: int, act_bytes: int) -> int:
    """Largest transient of decoder layer `layer` per token: residual + normed input + attention or MLP parts."""
    d = shape.hidden_size
    q, kv = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    attention = (q + 2 * kv) + (q + kv) + q + d  # q,k,v; rotated q,k; z (o_proj input); o_proj output
    if shape.is_moe_layer(layer):
        k, inter = shape.experts_per_token, shape.moe_intermediate_size
        mlp = k * (d + 3 * inter + d)  # per routed copy: input, gate/up/act, output (grouped-GEMM upper bound)
        if shape.shared_expert_intermediate_size:
            mlp += 3 * shape.shared_expert_intermediate_size + d
        router = 2 * shape.num_experts * _ROUTER_BYTES
    else:
        mlp, router = 3 * shape.intermediate_size + d, 0  # gate, up, act(gate)*up; down output
    return act_bytes * (2 * d + max(attention, mlp)) + router


@dataclass(frozen=True)
class WorkingMemory:
    """Bytes of one stage's working memory by cause."""

    activations: int
    transfers: int
    capture_buffers: int

    @property
    def total(self) -> int:
        return self.activations + self.transfers + self.capture_buffers

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def stage_working_memory(
    shape: ModelShape, layers: range, *, act_bytes: int, micro_batch_tokens: int, capture_bytes_per_token: int
) -> WorkingMemory:
    """Working memory of the stage holding `layers` for micro-batches of `micro_batch_tokens` tokens."""
    n = micro_batch_tokens
    peak = max(layer_peak_bytes_per_token(shape, layer, act_bytes) for layer in layers)
    ids = _TOKEN_ID_BYTES if layers.start == 0 else 0
    transfers = IN_FLIGHT_MICRO_BATCHES * 2 * shape.hidden_size * act_bytes  # received and sent hidden states
    return WorkingMemory(
        activations=n * (peak + ids),
        transfers=n * transfers,
        capture_buffers=n * capture_bytes_per_token * IN_FLIGHT_MICRO_BATCHES,  # double-buffered device->host
    )
