"""`--device` of the single-process build and of the solvers: one resolver, the same refusal line in both.

No GPU here: the CUDA path runs the same code (model loaded with `device_map={"": device}`, batches moved to the
stack's device, rows brought back to the CPU) that `--device cpu` exercises below.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from actcache.actcache_cli import main
from build_fixtures import write_jsonl_corpus
from test_build import _assert_matches_reference

LAYERS = [0, 2, 3]
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


@pytest.fixture(scope="module")
def cpu_cache(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache built through the command line with `--device cpu`."""
    root = tmp_path_factory.mktemp("device")
    out = root / "cache"
    argv = ["build", "--model", str(tiny_llama_dir), "--corpus", str(write_jsonl_corpus(root / "corpus.jsonl")),
            "--out", str(out), "--layers", ",".join(map(str, LAYERS)), "--batch-size", "3", "--device", "cpu",
            "--no-progress"]
    assert main(argv) == 0
    return out


def test_device_cpu_build_matches_plain_forward(cpu_cache: Path, tiny_llama_dir: Path) -> None:
    _assert_matches_reference(cpu_cache, tiny_llama_dir, LAYERS, rtol=1e-5)


def _refusal(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("actcache: error: ") and "\n" not in err, err
    return err


@NO_GPU
@pytest.mark.parametrize(("device", "expected"), [
    ("cuda", "--device cuda: no CUDA device is visible here"),
    ("cuda:1", "--device cuda:1: no CUDA device is visible here"),
    ("gpu", "--device 'gpu' is not a device: use cpu, cuda, cuda:N or auto"),
])
def test_unavailable_device_is_one_line_in_build_and_solve(cpu_cache: Path, tiny_llama_dir: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str], device: str,
                                                           expected: str) -> None:
    out = tmp_path / "cache"
    build = _refusal(capsys, ["build", "--model", str(tiny_llama_dir), "--out", str(out), "--device", device,
                              "--corpus", str(write_jsonl_corpus(tmp_path / "corpus.jsonl")), "--no-progress"])
    solve = _refusal(capsys, ["solve", "--cache", str(cpu_cache), "--out", str(tmp_path / "readout"),
                              "--label-field", "parity", "--positive", "1", "--device", device])
    assert expected in build and build == solve
    assert not out.exists() and not (tmp_path / "readout").exists()
