"""The TransformerLens-style hooks beyond resid_post/attn_z, against a plain transformers forward per document."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from actcache.cache_builder.build import BuildSettings, build_cache
from actcache.cache_builder.settings import BuildSettingsError
from actcache.storage import open_cache
from actcache.storage.errors import CacheError, InputError
from build_fixtures import reference_hooks, write_jsonl_corpus

DENSE_HOOKS = ("resid_pre", "resid_mid", "mlp_in", "mlp_out", "mlp_act")
MOE_HOOKS = ("resid_pre", "resid_mid", "mlp_in", "mlp_out", "router")


def _build(model_dir: Path, tmp_path: Path, hooks: tuple[str, ...], layers: str, **overrides) -> Path:
    corpus = write_jsonl_corpus(tmp_path / "corpus.jsonl")
    out = tmp_path / "cache"
    build_cache(BuildSettings(model=str(model_dir), corpus=corpus, out=out, progress=False, layers=layers,
                              hooks=hooks, **{"batch_size": 3, **overrides}))
    return out


def _assert_matches_reference(cache_path: Path, model_dir: Path, layers: list[int]) -> None:
    cache = open_cache(cache_path)
    docs = cache.documents()
    for doc, reference in zip(docs, reference_hooks(model_dir, [cache.token_ids(d.key) for d in docs], layers),
                              strict=True):
        assert {hook for hook, _ in reference} == set(cache.hooks)
        for (hook, layer), expected in reference.items():
            got = cache.activations(hook, layer, doc.key)
            assert got.shape == tuple(expected.shape), (hook, layer)
            if hook == "router_experts":
                assert got.dtype == np.int16
                np.testing.assert_array_equal(got, expected.numpy(), err_msg=f"layer {layer}")
                continue
            scale = float(expected.abs().max())
            np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-5 * scale, err_msg=f"{hook} {layer}")


def test_dense_hooks_match_plain_forward(tiny_llama_dir: Path, tmp_path: Path) -> None:
    cache_path = _build(tiny_llama_dir, tmp_path, DENSE_HOOKS, "0,3")
    assert open_cache(cache_path).width("mlp_act") == 128  # d_ff, not d_model
    _assert_matches_reference(cache_path, tiny_llama_dir, [0, 3])


def test_moe_hooks_and_router_match_plain_forward(tiny_moe_dir: Path, tmp_path: Path) -> None:
    cache_path = _build(tiny_moe_dir, tmp_path, MOE_HOOKS, "0,3")
    cache = open_cache(cache_path)
    assert cache.hooks == ("resid_pre", "resid_mid", "mlp_in", "mlp_out", "router_experts", "router_weights")
    assert cache.width("router_experts") == cache.width("router_weights") == 2  # top-2 of 8 experts
    _assert_matches_reference(cache_path, tiny_moe_dir, [0, 3])
    # ids are not activations: the token loader leaves them out by default and refuses them when named
    batch = next(iter(cache.tokens(layers=[3], shuffle=False, batch_size=16)))
    assert "router_weights.3" in batch and "router_experts.3" not in batch
    with pytest.raises(CacheError, match="integer ids"):
        cache.tokens(hooks=["router_experts"])
    ids = cache.xarray("router_experts")["layer_3"].values  # widened exactly, as every xarray variable
    np.testing.assert_array_equal(ids, np.concatenate([cache.activations("router_experts", 3, d.key)
                                                       for d in cache.documents()]))


def test_router_in_bfloat16_keeps_ids_int16_and_weights_bit_exact(tiny_moe_dir: Path, tmp_path: Path) -> None:
    from actcache.cache_builder.build import capture_batch
    from actcache.cache_builder.model_source import load_model, resolve_model
    from actcache.cache_builder.planning import TokenizedDoc
    from actcache.cache_builder.runner import DecoderStack

    cache = open_cache(_build(tiny_moe_dir, tmp_path, ("router",), "1", dtype="bfloat16", batch_size=1))
    stack = DecoderStack.from_causal_lm(load_model(resolve_model(str(tiny_moe_dir)), "bfloat16"))
    doc = cache.documents()[0]
    ids = cache.token_ids(doc.key).astype(np.int64)
    produced = capture_batch(stack, [TokenizedDoc(doc.key, ids, {}, len(ids))], cache.fingerprint.capture, 0, "right")
    weights = cache.tensor("router_weights", 1, doc.key)
    assert weights.dtype == torch.bfloat16
    assert torch.equal(weights.view(torch.int16), produced["router_weights/layer_1"].view(torch.int16))
    assert torch.equal(cache.tensor("router_experts", 1, doc.key).long(), produced["router_experts/layer_1"])
    # the zarr arrays say what they hold, for a reader without our package
    import zarr

    record = cache.commit_records()[0]
    array = zarr.open_array(str(cache.path), path=f"segments/{record.segment}/router_experts/layer_1", mode="r")
    assert array.dtype == np.int16 and array.fill_value == -1 and array.attrs["actcache_dtype"] == "int16"


@pytest.mark.parametrize(("fixture", "hooks", "layers", "expected"), [
    ("tiny_moe_dir", ("mlp_act",), "1", "mlp_act exists only on dense layers, but layer(s) [1] are MoE"),
    ("tiny_llama_dir", ("router",), "1", "need a model with top_k (router hooks need routed experts)"),
    ("tiny_llama_dir", ("mlp_post",), "1", "unknown hook(s) ['mlp_post']"),
])
def test_hooks_on_the_wrong_layers_are_refused_before_the_cache_exists(
        fixture: str, hooks: tuple[str, ...], layers: str, expected: str, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    with pytest.raises(InputError, match=re.escape(expected)) as raised:
        _build(request.getfixturevalue(fixture), tmp_path, hooks, layers)
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "cache").exists()
    if "unknown" in expected:
        assert isinstance(raised.value, BuildSettingsError)


@pytest.mark.slow
def test_smollm2_dense_hooks_match_plain_forward(smollm2_dir: Path, tmp_path: Path) -> None:
    cache_path = _build(smollm2_dir, tmp_path, DENSE_HOOKS, "0,15")
    _assert_matches_reference(cache_path, smollm2_dir, [0, 15])


def test_capture_itself_refuses_a_hook_the_layer_lacks(tiny_moe_dir: Path, tiny_llama_dir: Path) -> None:
    """The module check behind the config check: a MoE layer has no dense down_proj, a dense layer no router."""
    from actcache.cache_builder.capture import record_activations
    from actcache.cache_builder.model_source import load_model, resolve_model

    for model_dir, hook in ((tiny_moe_dir, "mlp_act"), (tiny_llama_dir, "router_weights")):
        layer = load_model(resolve_model(str(model_dir)), "float32").model.layers[2]
        with pytest.raises(BuildSettingsError, match=f"layer 2 has no mlp.* for {hook}"):
            with record_activations({2: layer}, [hook]):
                pass
