"""The stored values are a plain transformers forward, document by document, whatever the batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from actcache.cache_builder.build import BuildSettings, build_cache
from actcache.storage import open_cache
from build_fixtures import TEXTS, reference_activations, write_jsonl_corpus


def _build(model_dir: Path, tmp_path: Path, name: str, **overrides) -> Path:
    corpus = write_jsonl_corpus(tmp_path / "corpus.jsonl")
    settings = BuildSettings(model=str(model_dir), corpus=corpus, out=tmp_path / name, progress=False,
                             **{"layers": "0,2,3", "batch_size": 3, **overrides})
    build_cache(settings)
    return tmp_path / name


def _assert_matches_reference(cache_path: Path, model_dir: Path, layers: list[int], rtol: float) -> None:
    cache = open_cache(cache_path)
    docs = sorted(cache.documents(), key=lambda d: d.meta["index"])
    assert [d.meta["parity"] for d in docs] == [i % 2 for i in range(len(TEXTS))]
    references = reference_activations(model_dir, [cache.token_ids(d.key) for d in docs], layers, torch.float32)
    for doc, reference in zip(docs, references, strict=True):
        for (hook, layer), expected in reference.items():
            got = cache.activations(hook, layer, doc.key)
            scale = float(expected.abs().max())
            np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=rtol * scale,
                                       err_msg=f"{hook} layer {layer} doc {doc.meta['index']}")


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_moe_dir"])
def test_tiny_models_match_plain_forward(fixture: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    model_dir = request.getfixturevalue(fixture)
    cache_path = _build(model_dir, tmp_path, "cache")
    _assert_matches_reference(cache_path, model_dir, [0, 2, 3], rtol=1e-5)


def test_smollm2_matches_plain_forward(smollm2_dir: Path, tmp_path: Path) -> None:
    cache_path = _build(smollm2_dir, tmp_path, "cache", layers="0,8,15")
    _assert_matches_reference(cache_path, smollm2_dir, [0, 8, 15], rtol=1e-5)


def test_batch_composition_and_padding_side_change_nothing(tiny_llama_dir: Path, tmp_path: Path) -> None:
    one = open_cache(_build(tiny_llama_dir, tmp_path, "one", batch_size=1))
    left = open_cache(_build(tiny_llama_dir, tmp_path, "left", batch_size=7, padding_side="left"))
    right = open_cache(_build(tiny_llama_dir, tmp_path, "right", batch_size=4, padding_side="right"))
    for doc in one.documents():
        for other in (left, right):
            for hook in ("resid_post", "attn_z"):
                a = one.activations(hook, 3, doc.key)
                np.testing.assert_allclose(other.activations(hook, 3, doc.key), a, rtol=0, atol=1e-5 * abs(a).max())


def test_bfloat16_stores_the_model_bits_exactly(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from actcache.cache_builder.build import capture_batch
    from actcache.cache_builder.model_source import load_model, resolve_model
    from actcache.cache_builder.planning import TokenizedDoc
    from actcache.cache_builder.runner import DecoderStack

    cache = open_cache(_build(tiny_llama_dir, tmp_path, "bf16", dtype="bfloat16", batch_size=1))
    assert cache.dtype == "bfloat16"
    stack = DecoderStack.from_causal_lm(load_model(resolve_model(str(tiny_llama_dir)), "bfloat16"))
    for doc in cache.documents():
        ids = cache.token_ids(doc.key).astype(np.int64)
        produced = capture_batch(stack, [TokenizedDoc(doc.key, ids, {}, len(ids))], cache.fingerprint.capture, 0,
                                 "right")
        for name, values in produced.items():
            hook, layer = name.split("/layer_")
            stored = cache.tensor(hook, int(layer), doc.key)
            assert stored.dtype == torch.bfloat16
            assert torch.equal(stored.view(torch.int16), values.view(torch.int16)), name


def test_truncation_is_explicit_and_reported(tiny_llama_dir: Path, tmp_path: Path) -> None:
    corpus = write_jsonl_corpus(tmp_path / "corpus.jsonl")
    report = build_cache(BuildSettings(model=str(tiny_llama_dir), corpus=corpus, out=tmp_path / "t", layers="1",
                                       max_length=6, progress=False))
    cache = open_cache(tmp_path / "t")
    long_docs = [d for d in cache.documents() if d.original_tokens > 6]
    assert long_docs and all(d.n_tokens == 6 for d in long_docs)
    assert len(report.truncated) == len(long_docs)
    assert "truncated" in report.summary(tmp_path / "t") and cache.info()["truncated_documents"] == len(long_docs)
