"""The logit lens from cached residuals equals the model's own next-token distribution at the last layer, and its
top-k mass a direct torch computation at an earlier one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from actcache.actcache_cli import main
from actcache.cache_builder.build import BuildSettings, build_cache
from actcache.solvers.analyses.logit_lens import LogitLensSettings, Unembedding, logit_lens_cache
from actcache.solvers.errors import SolverInputError
from actcache.storage import open_cache
from transformers import AutoModelForCausalLM

TEXTS = ["The kettle whistled while Mara read the letter twice.", "Rain.",
         "She opened the gift and gasped: it was the watch her grandfather wore every day of his life."]


def _cache(model_dir: Path, tmp_path: Path, layers: str, hooks: tuple[str, ...] = ("resid_post",)) -> Path:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    out = tmp_path / "cache"
    build_cache(BuildSettings(model=str(model_dir), corpus=corpus, out=out, layers=layers, hooks=hooks,
                              progress=False))
    return out


def _model(model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()


def _model_outputs(model: torch.nn.Module, ids: np.ndarray) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The plain forward's logits (T, vocab) and hidden states (hidden_states[i + 1] = layer i's output)."""
    with torch.inference_mode():
        output = model(torch.as_tensor(ids.astype(np.int64))[None], output_hidden_states=True)
    return output.logits[0], output.hidden_states


def _assert_lens_is_the_model(cache_path: Path, model_dir: Path, last: int) -> None:
    reader = open_cache(cache_path)
    lens, model = Unembedding.from_cache(reader), _model(model_dir)
    for doc in reader.documents():
        logits, _ = _model_outputs(model, reader.token_ids(doc.key))
        got = lens.log_probs(torch.from_numpy(reader.activations("resid_post", last, doc.key))).exp()
        torch.testing.assert_close(got, torch.softmax(logits, dim=-1), rtol=0, atol=1e-5)


def test_last_layer_lens_equals_model_and_top_k_mass_a_direct_computation(tiny_llama_dir: Path,
                                                                          tmp_path: Path) -> None:
    cache_path = _cache(tiny_llama_dir, tmp_path, "1,3")
    _assert_lens_is_the_model(cache_path, tiny_llama_dir, 3)
    result = logit_lens_cache(cache_path, tmp_path / "lens", LogitLensSettings(top_k=8, batch_tokens=5))
    assert json.loads((tmp_path / "lens" / "logit_lens.json").read_text()) == result
    assert result["unembedding"] == "lm_head.weight" and result["layers"] == [1, 3]
    # direct: layer 1's output is hidden_states[2]; the model's own norm and lm_head; every token of every doc
    reader, model = open_cache(cache_path), _model(tiny_llama_dir)
    mass: dict[int, list[torch.Tensor]] = {1: [], 3: []}
    hits, n_next = 0.0, 0
    for doc in reader.documents():
        ids = reader.token_ids(doc.key)
        logits, hidden = _model_outputs(model, ids)
        with torch.inference_mode():
            layer1 = model.lm_head(model.model.norm(hidden[2][0]))  # type: ignore[attr-defined]
        for layer, values in ((1, layer1), (3, logits)):
            mass[layer].append(torch.softmax(values, -1).topk(8, dim=-1).values.sum(-1))
        hits += float((logits[:-1].argmax(-1) == torch.as_tensor(ids[1:].astype(np.int64))).sum())
        n_next += len(ids) - 1
    for layer in (1, 3):
        expected = float(torch.cat(mass[layer]).double().mean())
        assert result["per_layer"][str(layer)]["topk_mass"] == pytest.approx(expected, abs=1e-6)
        assert result["per_layer"][str(layer)]["n_tokens"] == reader.n_tokens
    assert result["per_layer"]["3"]["next_token_accuracy"] == pytest.approx(hits / n_next, abs=1e-12)
    assert result["per_layer"]["3"]["n_next_tokens"] == n_next


def test_command_and_refusals(tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache_path = _cache(tiny_llama_dir, tmp_path, "3", hooks=("resid_post", "attn_z"))
    assert main(["logit-lens", "--cache", str(cache_path), "--layers", "-1", "--top-k", "4"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["top_k"] == 4 and printed["layers"] == [3] and 0 < printed["per_layer"]["3"]["topk_mass"] <= 1
    with pytest.raises(SolverInputError, match="pick a residual hook"):
        logit_lens_cache(cache_path, None, LogitLensSettings(hook="attn_z"))
    with pytest.raises(SolverInputError, match=r"layer\(s\) \[1\] not in the cache"):
        logit_lens_cache(cache_path, None, LogitLensSettings(layers="1"))


@pytest.mark.slow
def test_smollm2_tied_embeddings_lens_equals_model(smollm2_dir: Path, tmp_path: Path) -> None:
    cache_path = _cache(smollm2_dir, tmp_path, "29")
    assert logit_lens_cache(cache_path, None, LogitLensSettings())["unembedding"].startswith("embed_tokens.weight")
    _assert_lens_is_the_model(cache_path, smollm2_dir, 29)
