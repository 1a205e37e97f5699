"""The planner: partition properties, weight and parameter counts against transformers and the published totals,
the 235B plan on 8 GPUs, refusals, and the `plan` command."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from actcache.cache_builder.model_registry import CONFIG_DIR, list_model_names, load_model_spec
from actcache.cluster.cli import register
from actcache.cluster.planner import CaptureRequest, ClusterSpec, PlanError, format_plan, partition_layers, plan_build
from actcache.cluster.volume import compression_ratio
from actcache.cluster.weight_bytes import ModelShape, WeightFormat, layer_tensors, parameter_count, tensors_bytes

GIB = 2**30
REPO = CONFIG_DIR.parent.parent
REF_235B = "qwen3-235b-a22b-fp8"
PAPER_CAPTURE = CaptureRequest(layers=(23, 46, 69), hooks=("resid_post", "attn_z"), tokens=10**9, tokens_per_s=20000)


def _loads(ranges: list[range], weights: list[int], extra: int) -> list[int]:
    return [sum(weights[i] for i in r) + (extra if k == 0 else 0) for k, r in enumerate(ranges)]


def _check_cover(ranges: list[range], n: int, n_stages: int) -> None:
    assert len(ranges) == n_stages
    assert ranges[0].start == 0 and ranges[-1].stop == n
    assert all(len(r) >= 1 and r.step == 1 for r in ranges)
    assert all(a.stop == b.start for a, b in itertools.pairwise(ranges))


def _brute_min_max(weights: list[int], n_stages: int, extra: int) -> int:
    n = len(weights)
    best = math.inf
    for cuts in itertools.combinations(range(1, n), n_stages - 1):
        bounds = (0, *cuts, n)
        ranges = [range(a, b) for a, b in itertools.pairwise(bounds)]
        best = min(best, max(_loads(ranges, weights, extra)))
    return int(best)


def test_partition_is_contiguous_complete_and_has_the_smallest_bottleneck() -> None:
    rng = random.Random(0)
    for _ in range(150):
        n = rng.randint(1, 9)
        weights = [rng.randint(0, 50) for _ in range(n)]
        n_stages, extra = rng.randint(1, n), rng.choice([0, rng.randint(0, 120)])
        ranges = partition_layers(weights, n_stages, extra)
        _check_cover(ranges, n, n_stages)
        assert max(_loads(ranges, weights, extra)) == _brute_min_max(weights, n_stages, extra)


def test_partition_neighbours_differ_by_at_most_their_boundary_layer() -> None:
    """Else moving that layer to the lighter stage would give a more even split with no heavier stage."""
    rng = random.Random(1)
    for _ in range(100):
        n = rng.randint(2, 60)
        weights = [rng.randint(1, 1000) for _ in range(n)]
        n_stages, extra = rng.randint(2, min(n, 12)), rng.randint(0, 500)
        ranges = partition_layers(weights, n_stages, extra)
        _check_cover(ranges, n, n_stages)
        loads = _loads(ranges, weights, extra)
        for (a, b), (la, lb) in zip(itertools.pairwise(ranges), itertools.pairwise(loads), strict=True):
            heavier, layer = (a, a.stop - 1) if la > lb else (b, b.start)
            assert len(heavier) == 1 or abs(la - lb) <= weights[layer], (ranges, loads)


@pytest.mark.parametrize(("n", "n_stages", "extra"), [(70, 8, 300), (94, 8, 0), (10, 4, 0), (36, 5, 999), (7, 7, 5)])
def test_partition_of_equal_layers_is_balanced_within_one_layer(n: int, n_stages: int, extra: int) -> None:
    layer = 1000
    ranges = partition_layers([layer] * n, n_stages, extra)
    _check_cover(ranges, n, n_stages)
    loads = _loads(ranges, [layer] * n, extra)
    assert max(loads) - min(loads) <= layer


def test_partition_refuses_impossible_stage_counts() -> None:
    with pytest.raises(PlanError, match="at most 3 stages"):
        partition_layers([1, 2, 3], 4)
    with pytest.raises(PlanError, match="at least one stage"):
        partition_layers([1, 2, 3], 0)


@pytest.mark.parametrize("name", list_model_names())
def test_parameter_count_equals_the_transformers_model(name: str) -> None:
    """Independent reference: the same config instantiated by transformers on the meta device (no memory)."""
    torch = pytest.importorskip("torch")
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = load_model_spec(name)
    fields = {k: v for k, v in spec.config.items() if k not in ("quantization_config", "architectures")}
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert parameter_count(ModelShape.from_config(spec.config)) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["qwen3-235b-a22b-fp8", "qwen3-8b", "qwen2.5-7b"])
def test_parameter_count_matches_the_published_total(name: str) -> None:
    spec = load_model_spec(name)
    published = float(spec.extra["published_params"])
    assert parameter_count(ModelShape.from_config(spec.config)) == pytest.approx(published, rel=0.02)


def test_fp8_layer_bytes_count_weights_at_one_byte_plus_block_scales() -> None:
    spec = load_model_spec(REF_235B)
    shape, fmt = ModelShape.from_config(spec.config), WeightFormat.from_spec(spec)
    d, q, kv, experts, inter = 4096, 64 * 128, 4 * 128, 128, 1536
    fp8 = 2 * q * d + 2 * kv * d + experts * 3 * d * inter  # q, o, k, v, experts: 1 byte each
    blocks = 2 * (q // 128) * (d // 128) + 2 * (kv // 128) * (d // 128) + experts * 3 * (d // 128) * (inter // 128)
    scales = 4 * blocks  # one float32 scale per 128x128 block
    bf16 = 2 * (2 * d + 2 * 128 + experts * d)  # two norms, q/k norms, router
    assert tensors_bytes(layer_tensors(shape, 0), fmt) == fp8 + scales + bf16


def _paper_cluster(**kw: Any) -> ClusterSpec:
    return ClusterSpec(**{"nodes": 1, "gpus_per_node": 8, "gpu_mem_gib": 80, **kw})


def test_235b_plan_on_one_node_of_eight_80gib_gpus() -> None:
    spec = load_model_spec(REF_235B)
    plan = plan_build(spec, _paper_cluster(), PAPER_CAPTURE)
    assert (plan.n_stages, plan.n_replicas, plan.layers_loaded) == (8, 1, 70)
    _check_cover([s.layers for s in plan.stages], 70, 8)
    weights = [s.weight_bytes for s in plan.stages]
    one_layer = tensors_bytes(layer_tensors(ModelShape.from_config(spec.config), 0), WeightFormat.from_spec(spec))
    assert max(weights) - min(weights) <= one_layer
    assert all(17 * GIB < w < 23 * GIB for w in weights)  # ~70.3 layers of ~2.3 GiB over 8 GPUs
    assert all(0 < s.free_bytes and s.total_bytes < 80 * GIB for s in plan.stages)
    assert 230e9 < plan.model_weight_bytes < 240e9  # the published FP8 checkpoint is ~236 GB
    assert plan.bytes_per_token == 3 * 4096 * 2 + 3 * 64 * 128 * 2 == 73_728
    assert plan.store_bytes == 73_728 * 10**9
    assert plan.to_dict()["store_bytes"]["compressed"] < plan.store_bytes  # by the measured ratio (test below)
    assert plan.write_bytes_per_s == pytest.approx(1.47456e9)
    captured = [layer for s in plan.stages for _, layer in s.captures]
    assert sorted(set(captured)) == [23, 46, 69]
    text = format_plan(plan)
    assert "layers 70-93, the final norm and lm_head are not loaded" in text
    assert "73,728 B" in text and "1.47 GB/s raw" in text
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["stages"][0]["first_layer"] == 0 and data["stages"][-1]["last_layer"] == 69
    assert CaptureRequest.from_dict(data["capture"]) == plan.capture
    assert ClusterSpec.from_dict(data["cluster"]) == plan.cluster


def test_235b_on_one_80gib_gpu_is_refused_with_the_fix() -> None:
    with pytest.raises(PlanError) as err:
        plan_build(load_model_spec(REF_235B), _paper_cluster(gpus_per_node=1), PAPER_CAPTURE)
    message = str(err.value)
    assert "\n" not in message
    assert "stage 0 (layers 0-69)" in message and "80 GiB" in message and "at least 3 GPUs" in message


def test_235b_plan_suggests_a_layout_when_too_few_stages_are_forced() -> None:
    with pytest.raises(PlanError, match="use --stages 4 --replicas 2"):
        plan_build(load_model_spec(REF_235B), _paper_cluster(stages=2), PAPER_CAPTURE)


def test_working_memory_counts_toward_the_fit() -> None:
    huge = CaptureRequest(layers=(23,), micro_batch_tokens=2_000_000)
    with pytest.raises(PlanError, match="lower --micro-batch-tokens"):
        plan_build(load_model_spec(REF_235B), _paper_cluster(), huge)


@pytest.mark.parametrize(
    ("cluster", "capture", "match"),
    [
        (dict(gpus_per_node=0), PAPER_CAPTURE, "at least 1"),
        (dict(stages=3), PAPER_CAPTURE, "does not divide 8 GPUs"),
        (dict(stages=4, replicas=4), PAPER_CAPTURE, "make stages x replicas = 8"),
        (dict(), CaptureRequest(layers=(2,)), "only 3 layers to load"),
        (dict(), CaptureRequest(layers=(94,)), "out of range"),
        (dict(), CaptureRequest(layers=(5,), hooks=("mlp_post",)), "unknown hook"),
    ],
)
def test_refusals_name_the_problem(cluster: dict[str, int], capture: CaptureRequest, match: str) -> None:
    with pytest.raises(PlanError, match=match):
        plan_build(load_model_spec(REF_235B), _paper_cluster(**cluster), capture)


def test_a_small_model_plan_suggests_more_replicas() -> None:
    plan = plan_build(load_model_spec("qwen3-8b"), _paper_cluster(), CaptureRequest(layers=(18,)))
    assert plan.layers_loaded == 19
    assert any("--stages 1 --replicas 8" in note for note in plan.notes)


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="actcache")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


PAPER_ARGS = ["plan", "--model-config", f"configs/models/{REF_235B}.yaml", "--layers", "23,46,69",
              "--hooks", "resid_post,attn_z", "--tokens", "1e9", "--tokens-per-s", "20000"]


def test_plan_command_prints_the_plan_and_json(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    assert _run([*PAPER_ARGS, "--cluster", "configs/clusters/1x8-h100-80g.yaml"]) == 0
    out = capsys.readouterr().out
    assert "8-stage pipeline" in out and "store for 1,000,000,000 tokens: 73.7 TB raw" in out
    assert _run([*PAPER_ARGS, "--nodes", "1", "--gpus-per-node", "8", "--gpu-mem-gib", "80", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["n_stages"] == 8 and data["bytes_per_token"] == 73_728


def test_plan_command_refuses_with_exit_2_and_one_line() -> None:
    code = ("import argparse, sys; from cluster.cli import register; p = argparse.ArgumentParser(); "
            "register(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")
    args = [*PAPER_ARGS, "--gpus-per-node", "1", "--gpu-mem-gib", "80"]
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("plan refused: stage 0 (layers 0-69) needs")


def test_compression_ratios_are_the_benchmark_measurements() -> None:
    """The planner's zstd ratios are the ones tests/bench/bench_build.py measured, as its table in the README
    shows them: re-measuring without updating cluster/volume.py (or the reverse) fails here."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()

    def measured(row: str) -> float:
        line = next(line for line in readme.splitlines() if line.startswith(row))
        return float(line.split()[-2])  # columns: ... stored/raw, ratio, write MB/s

    assert compression_ratio("float32") == measured("build, 3 layers (8,15,22), both hooks")
    assert compression_ratio("bfloat16") == measured("build, 3 layers, bfloat16 compute+store")


@pytest.mark.parametrize(("store_as", "value_bytes", "scale_bytes", "outliers", "ratio"),
                         [("exact", 2, 0, 0, 1.45), ("bfloat16", 2, 0, 0, 1.45), ("fp8", 1, 4, 16, 1.0),
                          ("int8", 1, 4, 8, 1.0)])
def test_store_as_sizes_the_store_by_the_modes_bytes_per_value(
    store_as: str, value_bytes: int, scale_bytes: int, outliers: int, ratio: float,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bf16 model's rows cost 2 B a value exact or as bfloat16, 1 B plus a 4-byte float32 scale per token row as
    fp8/int8 codes, plus each exact outlier's uint16 column and float32 value (at most the row's width: router
    weights have 8); router expert ids stay int16 in every mode. fp8/int8 assume no zstd gain (none measured)."""
    monkeypatch.chdir(REPO)
    assert _run([*PAPER_ARGS, "--hooks", "resid_post,attn_z,router", "--store-as", store_as, "--nodes", "1",
                 "--gpus-per-node", "8", "--gpu-mem-gib", "80", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {"resid_post": 4096, "attn_z": 64 * 128, "router_weights": 8}  # Qwen3-235B: d_model, heads x head_dim, top-k
    expected = {hook: 3 * (width * value_bytes + scale_bytes + min(outliers, width) * (2 + 4))
                for hook, width in rows.items()}
    expected["router_experts"] = 3 * 8 * 2
    assert data["bytes_per_token_by_hook"] == expected
    assert data["capture"]["store_as"] == store_as and data["compression_ratio"] == ratio
    assert data["store_bytes"]["raw"] == sum(expected.values()) * 10**9
    assert data["write_bytes_per_s"]["raw"] == sum(expected.values()) * 20000
    assert data["stages"][2]["capture_bytes_per_token"] == 4096 * 2 + 64 * 128 * 2 + 8 * 2 + 8 * 2  # device buffers
