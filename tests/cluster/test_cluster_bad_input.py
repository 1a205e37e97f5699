"""Bad input to the distributed build: one clear line each, before anything is written or started."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest
from actcache.cache_builder.model_source import ModelError
from actcache.cluster.partition import PlanError
from actcache.cluster.pipeline import build_distributed
from actcache.cluster.ray_connect import ClusterError
from cluster_helpers import settings_for


def _one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


def test_more_stages_than_layers(tiny_llama_dir: Path, corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    with pytest.raises(PlanError) as error:
        build_distributed(settings_for(tiny_llama_dir, corpus, out, layers="0,1"), stages=3)
    assert "3 stages for 2 layers" in _one_line(error) and "at most 2" in str(error.value)
    assert not out.exists()


def test_unreachable_ray_address(tiny_llama_dir: Path, corpus: Path, tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "cache"
    started = time.monotonic()
    with pytest.raises(ClusterError) as error:
        build_distributed(settings_for(tiny_llama_dir, corpus, out), stages=2, address=f"127.0.0.1:{port}")
    assert time.monotonic() - started < 10
    assert "does not answer" in _one_line(error) and "ray start --head" in str(error.value)
    assert not out.exists()


def test_model_dir_without_safetensors(tiny_llama_dir: Path, corpus: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(tiny_llama_dir / "config.json", model / "config.json")
    out = tmp_path / "cache"
    with pytest.raises(ModelError) as error:
        build_distributed(settings_for(model, corpus, out), stages=2)
    assert "no *.safetensors" in _one_line(error)
    assert not out.exists()


def test_stages_must_be_positive(tiny_llama_dir: Path, corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ClusterError) as error:  # an input error (one line in the CLI), not a plain ValueError
        build_distributed(settings_for(tiny_llama_dir, corpus, tmp_path / "cache"), stages=0)
    assert "at least 1" in _one_line(error)
