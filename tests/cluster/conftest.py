"""A simulated two-node Ray cluster with fake GPUs, and single-process reference caches to compare against.

Each node declares 4 CPUs and 4 GPUs; Ray hands a stage a GPU id, torch sees no CUDA, so the stage runs on CPU:
the same code path a real GPU node takes, minus the device. Ray writes its sockets under a short RAY_TMPDIR.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from actcache.cache_builder.build import build_cache
from cluster_helpers import settings_for, single_threaded

SENTIMENT = Path(__file__).resolve().parent.parent / "data" / "sentiment.jsonl"
NODE = {"num_cpus": 4, "num_gpus": 4, "object_store_memory": 256 * 2**20}


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[object]:
    """Two nodes (head + worker), connected as this process's Ray; shut down at the end of the session."""
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # socket paths must stay short
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    cluster.add_node(**NODE)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """160 short labelled documents (~4.6k tokens with the tiny tokenizer)."""
    return SENTIMENT


@pytest.fixture(scope="session")
def short_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 12 documents, for the bigger models."""
    path = tmp_path_factory.mktemp("corpus") / "short.jsonl"
    path.write_text("".join(SENTIMENT.read_text().splitlines(keepends=True)[:12]))
    return path


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory, corpus: Path, tiny_llama_dir: Path,
              tiny_moe_dir: Path) -> dict[str, Path]:
    """Single-process caches of both tiny models over `corpus`: what every pipeline must reproduce."""
    out = {}
    for name, model in (("tiny-llama", tiny_llama_dir), ("tiny-qwen3-moe", tiny_moe_dir)):
        path = tmp_path_factory.mktemp("reference") / name
        with single_threaded():
            build_cache(settings_for(model, corpus, path))
        out[name] = path
    return out
