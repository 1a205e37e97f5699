"""The human-readable plan: GPU memory in GiB (as GPUs are sold), disk and bandwidth in decimal GB/TB (as disks
and links are)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from actcache.cluster.planner import Plan

__all__ = ["format_plan", "layer_span"]

_GIB = 2**30


def _gib(nbytes: float) -> str:
    """GPU memory: GiB, or MiB for the tiny test models."""
    return f"{nbytes / _GIB:.1f} GiB" if abs(nbytes) >= _GIB else f"{nbytes / 2**20:.1f} MiB"


def _params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def _si(nbytes: float, suffix: str = "B") -> str:
    for unit in ("", "k", "M", "G", "T", "P"):
        if abs(nbytes) < 1000 or unit == "P":
            return f"{nbytes:.3g} {unit}{suffix}" if unit else f"{nbytes:.0f} {suffix}"
        nbytes /= 1000
    raise AssertionError("unreachable")


def layer_span(layers: range) -> str:
    """`layers 3-7` or `layer 3`."""
    return f"layers {layers.start}-{layers.stop - 1}" if len(layers) > 1 else f"layer {layers.start}"


def format_plan(plan: Plan) -> str:
    """The plan as a short report: layout, per-GPU memory table, bytes per token, store size, bandwidth, notes."""
    c, cap = plan.cluster, plan.capture
    lines = [
        f"model: {plan.model_name}" + (f" ({plan.hf_id})" if plan.hf_id else "")
        + f": {_params(plan.total_params)} params, {plan.num_layers} layers, {_gib(plan.model_weight_bytes)}"
          " of weights in all",
        f"cluster: {c.nodes} node(s) x {c.gpus_per_node} GPU(s) x {c.gpu_mem_gib:g} GiB = {c.gpus} GPU(s) -> "
        f"{plan.n_replicas} replica(s) of a {plan.n_stages}-stage pipeline",
        f"capture: layers {','.join(map(str, cap.layers))}; hooks {','.join(cap.hooks)}; {cap.capture_dtype}"
        f"{'' if cap.store_as == 'exact' else f', stored as {cap.store_as} (lossy)'}; "
        f"micro-batch {cap.micro_batch_tokens} tokens",
        f"loaded: layers 0-{plan.layers_loaded - 1} ({plan.layers_loaded} of {plan.num_layers}); "
        "stage 0 also holds the embedding",
        "",
        f"{'stage':>5}  {'layers':<8} {'weights':>10} {'working':>10} {'headroom':>10} {'total':>10} "
        f"{'free':>10}  captures",
    ]
    for s in plan.stages:
        captured = ", ".join(f"{h}@{layer}" for h, layer in s.captures) or "-"
        span = layer_span(s.layers).split()[-1]  # "3-7" or "3"
        memory = (s.weight_bytes, s.working.total, s.headroom_bytes, s.total_bytes, s.free_bytes)
        lines.append(f"{s.index:>5}  {span:<8} " + " ".join(f"{_gib(b):>10}" for b in memory) + f"  {captured}")
    n_layers = len(cap.layers)
    by_hook = "; ".join(f"{h} {_si(b)} = {n_layers} layer(s) x {b // n_layers} B" for h, b in
                        plan.bytes_per_token_by_hook.items())
    lines += ["", f"captured per token: {plan.bytes_per_token:,} B ({by_hook})"]
    stored = cap.capture_dtype if cap.store_as == "exact" else f"{cap.store_as} codes"
    ratio = f"~{plan.compression_ratio:g}x lossless zstd on {stored}"
    if plan.store_bytes is not None:
        lines.append(f"store for {cap.tokens:,} tokens: {_si(plan.store_bytes)} raw, "
                     f"{_si(plan.store_bytes / plan.compression_ratio)} compressed ({ratio})")
    tps = cap.tokens_per_s
    if tps is not None:
        rate = tps * plan.bytes_per_token
        line = (f"write bandwidth at {tps:,.0f} tok/s: {_si(rate, 'B/s')} raw, "
                f"{_si(rate / plan.compression_ratio, 'B/s')} compressed")
        if cap.tokens is not None and tps:
            line += f"; {cap.tokens / tps / 3600:.1f} h for the corpus"
        busiest = max(plan.stages, key=lambda s: s.capture_bytes_per_token)
        stage_rate = busiest.capture_bytes_per_token * tps / plan.n_replicas
        lines += [line, f"busiest writer: stage {busiest.index} of each replica, {_si(stage_rate, 'B/s')} raw"]
        if plan.n_stages > 1:
            link = plan.interstage_bytes_per_token * tps / plan.n_replicas
            lines.append(f"inter-stage traffic: {plan.interstage_bytes_per_token:,} B of hidden state per token "
                         f"per stage boundary = {_si(link, 'B/s')} per link")
    else:
        lines.append("(give --tokens-per-s for the write bandwidth)")
    lines += ["", "notes:"] + [f"  - {note}" for note in plan.notes]
    return "\n".join(lines)
