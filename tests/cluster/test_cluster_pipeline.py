"""Pipelines of S stages x R replicas on a simulated two-node cluster build exactly the single-process cache.

Equality is bit-exact in float32: every stage runs the same modules on the same padded batches as the
single-process builder (same batch composition, same masks and rotary phases rebuilt locally) with the same
number of torch threads (one), so the same floating-point operations happen in the same order; only where they
run differs. (With 2 threads in the reference, SmolLM2's wider matmuls split their reductions differently and
per-token differences up to ~2e-6 relative (row norm) appear; the tiny models' matmuls are too small to split.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from actcache.cache_builder.build import build_cache, prepare_build
from actcache.cache_builder.model_source import ResolvedModel, resolve_model
from actcache.cache_builder.partial_load import EMBED, checkpoint_tensors, key_owner
from actcache.cluster._stage import StageStats
from actcache.cluster.pipeline import Backbone, build_distributed, stage_ranges
from actcache.storage import verify_cache
from cluster_helpers import assert_same_cache, settings_for, single_threaded

MODEL_FIXTURES = {"tiny-llama": "tiny_llama_dir", "tiny-qwen3-moe": "tiny_moe_dir"}


def assert_partial_loading(model: ResolvedModel, stats: list[StageStats]) -> None:
    """Each stage read exactly its own layers' tensors (stage 0 also the embedding), never the final norm or
    lm_head, and holds exactly what it read."""
    keys = checkpoint_tensors(model)
    for stage in stats:
        first, stop = stage.layers
        owned = set(range(first, stop)) | ({EMBED} if first == 0 else set())
        assert set(stage.keys_read) == {k for k in keys if key_owner(k) in owned}
        assert stage.bytes_read == sum(keys[k][1] for k in stage.keys_read)
        assert stage.param_bytes == stage.bytes_read  # float32 checkpoint and compute: nothing else materialised
    assert not any(key_owner(k) is None for s in stats for k in s.keys_read)


@pytest.mark.parametrize("stages", [2, 3])
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen3-moe"])
def test_pipeline_equals_single_process(ray_cluster: object, reference: dict[str, Path], corpus: Path,
                                        tmp_path: Path, request: pytest.FixtureRequest, name: str,
                                        stages: int) -> None:
    model = resolve_model(request.getfixturevalue(MODEL_FIXTURES[name]))
    ranges = stage_ranges(model, deepest=3, stages=stages)
    assert [r.start for r in ranges][0] == 0 and ranges[-1].stop == 4 and len(ranges) == stages
    backbone = Backbone(model, ranges, replicas=2)
    try:
        stats = backbone.stats
        assert all(s.device == "cpu" and len(s.gpu_ids) == 1 for s in stats)  # a fake GPU each, run on CPU
        assert len({s.pid for s in stats}) == 2 * stages
        if stages == 3:
            assert len({s.node_id for s in stats}) == 2  # 6 GPUs asked of two 4-GPU nodes
        assert_partial_loading(model, stats[:stages])
        if name == "tiny-qwen3-moe":  # the checkpoint stores experts one by one; transformers fuses them on load
            assert any(".mlp.experts.7.down_proj.weight" in k for k in stats[-1].keys_read)
        for replicas in (1, 2):
            out = tmp_path / f"r{replicas}"
            report = backbone.build(prepare_build(settings_for(model.path, corpus, out)), replicas=replicas)
            assert (report.built_documents, report.reused_documents, report.redone_units) == (160, 0, 0)
            assert verify_cache(out).ok
            assert_same_cache(reference[name], out)
    finally:
        backbone.shutdown()


@pytest.mark.slow
def test_smollm2_two_stages(ray_cluster: object, smollm2_dir: Path, short_corpus: Path, tmp_path: Path) -> None:
    """The real (dequantised) SmolLM2-135M checkpoint, 30 layers, through `build_distributed`."""
    settings = settings_for(smollm2_dir, short_corpus, tmp_path / "ref", layers="2,15,29")
    with single_threaded():
        build_cache(settings)
    out = tmp_path / "pipeline"
    report = build_distributed(settings_for(smollm2_dir, short_corpus, out, layers="2,15,29"), stages=2)
    assert report.built_documents == 12 and [s.layers for s in report.stage_stats][-1][1] == 30
    assert verify_cache(out).ok
    assert_same_cache(settings.out, out)  # type: ignore[arg-type]


def test_235b_shape_three_stages(ray_cluster: object, tiny_moe_235b_dir: Path, short_corpus: Path,
                                 tmp_path: Path) -> None:
    """Qwen3-235B-A22B's structure (94 layers, 128 experts of which 8 active, 64/4 heads) in three stages."""
    settings = settings_for(tiny_moe_235b_dir, short_corpus, tmp_path / "ref", layers="0,46,93")
    with single_threaded():
        build_cache(settings)
    out = tmp_path / "pipeline"
    report = build_distributed(settings_for(tiny_moe_235b_dir, short_corpus, out, layers="0,46,93"), stages=3)
    spans = [s.layers for s in report.stage_stats]
    assert spans[0][0] == 0 and spans[-1][1] == 94
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))  # contiguous
    assert all(25 <= b - a <= 38 for a, b in spans)  # balanced by bytes: about a third of the layers each
    experts = {k.split(".mlp.experts.")[1].split(".")[0] for k in report.stage_stats[1].keys_read if ".experts." in k}
    assert len(experts) == 128
    assert verify_cache(out).ok
    assert_same_cache(settings.out, out)  # type: ignore[arg-type]
