"""The TransformerLens-style hooks and the router through a Ray pipeline: bit-exact with the single process,
including resid_pre at a stage boundary (the hidden state that crossed between stages) and at layer 0 (the
embeddings, on stage 0)."""

from __future__ import annotations

from pathlib import Path

import pytest
from actcache.cache_builder.build import build_cache
from actcache.cluster.pipeline import build_distributed
from actcache.storage import verify_cache
from cluster_helpers import assert_same_cache, settings_for, single_threaded

MOE_HOOKS = ("resid_pre", "resid_mid", "mlp_in", "mlp_out", "router", "resid_post")


def test_moe_hooks_two_stages_equal_single_process(ray_cluster: object, tiny_moe_dir: Path, short_corpus: Path,
                                                   tmp_path: Path) -> None:
    settings = settings_for(tiny_moe_dir, short_corpus, tmp_path / "ref", hooks=MOE_HOOKS)
    with single_threaded():
        build_cache(settings)
    out = tmp_path / "pipeline"
    report = build_distributed(settings_for(tiny_moe_dir, short_corpus, out, hooks=MOE_HOOKS), stages=2)
    boundary = report.stage_stats[1].layers[0]
    assert 0 < boundary < 4  # resid_pre of `boundary` is stage 1's input
    assert verify_cache(out).ok
    assert_same_cache(settings.out, out)  # type: ignore[arg-type]


def test_plan_counts_each_new_hook_at_its_width_and_dtype() -> None:
    """Bytes per token: mlp_in = d_model, mlp_act = d_ff, router = top_k int16 ids + top_k weights (capture dtype);
    `router` on the 235B host costs 32 bytes per token per layer in bf16, against 8192 for resid_post."""
    from actcache.cache_builder.model_registry import load_model_spec
    from actcache.cluster._plan_error import PlanError
    from actcache.cluster.planner import CaptureRequest, ClusterSpec, plan_build

    node = ClusterSpec(nodes=1, gpus_per_node=8, gpu_mem_gib=80)
    moe = load_model_spec("qwen3-235b-a22b-fp8")
    plan = plan_build(moe, node, CaptureRequest(layers=(23, 46), hooks=("router", "mlp_in", "resid_pre")))
    assert plan.capture.hooks == ("router_experts", "router_weights", "mlp_in", "resid_pre")
    top_k, hidden = moe.config["num_experts_per_tok"], moe.config["hidden_size"]
    assert plan.bytes_per_token_by_hook == {"router_experts": 2 * top_k * 2, "router_weights": 2 * top_k * 2,
                                            "mlp_in": 2 * hidden * 2, "resid_pre": 2 * hidden * 2}
    assert sum(s.capture_bytes_per_token for s in plan.stages) == sum(plan.bytes_per_token_by_hook.values())
    with pytest.raises(PlanError, match=r"mlp_act exists only on dense layers, but layer\(s\) \[23\] are MoE"):
        plan_build(moe, node, CaptureRequest(layers=(23,), hooks=("mlp_act",)))
    dense = load_model_spec("qwen3-8b")
    plan = plan_build(dense, ClusterSpec(nodes=1, gpus_per_node=1, gpu_mem_gib=80),
                      CaptureRequest(layers=(18,), hooks=("mlp_act",)))
    assert plan.bytes_per_token_by_hook == {"mlp_act": dense.config["intermediate_size"] * 2}
