"""Readout files: layout, float16 unit rows, manifest, refusal of an existing directory; the report."""

from __future__ import annotations

import json

import pytest
import torch
from actcache.solvers import Readout, SolverInputError, read_readout, triage_report, write_readout
from job_fixtures import SAME
from safetensors.torch import load_file


def _readout(scale: float = 3.0) -> Readout:
    g = torch.Generator().manual_seed(0)
    return Readout(
        ("anger", "joy"), (4, 8), 6, {4: scale * torch.randn(2, 6, generator=g), 8: torch.randn(2, 6, generator=g)}
    )


def test_write_and_read_back(tmp_path):
    caa, sub = _readout(), _readout(0.5)
    quality = {"anger": {"triage": "fragmented"}}
    out = write_readout(tmp_path / "out", {"caa": caa, "subspace": sub}, primary="caa", quality=quality, report="# r\n")
    tensors = load_file(str(out / "readout.safetensors"))
    assert set(tensors) == {"layer_4.vectors", "layer_8.vectors"}
    for key, t in tensors.items():
        assert t.dtype == torch.float16 and t.shape == (2, 6)
        torch.testing.assert_close(t.float().norm(dim=1), torch.ones(2), atol=2e-3, rtol=0)
        layer = int(key.split(".")[0].split("_")[1])
        assert torch.nn.functional.cosine_similarity(t.float(), caa.vectors[layer]).min() >= SAME
    manifest = json.loads((out / "readout.json").read_text())
    assert manifest == {
        "concepts": ["anger", "joy"],
        "layers": [4, 8],
        "hidden_size": 6,
        "dtype": "float16",
        "method": "caa",
        "methods": ["caa", "subspace"],
    }
    assert json.loads((out / "quality.json").read_text()) == quality
    assert (out / "report.md").read_text() == "# r\n"
    back = read_readout(out, "subspace")
    assert back.concepts == ("anger", "joy") and back.layers == (4, 8)
    assert torch.nn.functional.cosine_similarity(back.vectors[8], sub.vectors[8]).min() >= SAME
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary directory left


def test_refuses_existing_directory(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(SolverInputError, match=r"output directory .*out exists: pass --overwrite to replace it"):
        write_readout(tmp_path / "out", {"caa": _readout()}, primary="caa")


def test_a_failed_overwrite_keeps_the_earlier_readout(tmp_path):
    write_readout(tmp_path / "out", {"caa": _readout()}, primary="caa")
    before = (tmp_path / "out" / "readout.safetensors").read_bytes()
    zero = Readout(("a", "b"), (1,), 3, {1: torch.tensor([[1.0, 0, 0], [0, 0, 0]])})
    with pytest.raises(SolverInputError, match="zero vector"):
        write_readout(tmp_path / "out", {"caa": zero}, primary="caa", overwrite=True)
    assert (tmp_path / "out" / "readout.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or old sibling left


def test_bad_readouts_leave_nothing(tmp_path):
    zero = Readout(("a", "b"), (1,), 3, {1: torch.tensor([[1.0, 0, 0], [0, 0, 0]])})
    with pytest.raises(SolverInputError, match=r"caa layer 1: zero vector for \['b'\]"):
        write_readout(tmp_path / "out", {"caa": zero}, primary="caa")
    wrong = Readout(("a", "b"), (1,), 4, {1: torch.ones(2, 3)})
    with pytest.raises(SolverInputError, match=r"vectors of shape \(2, 3\), expected \(2, 4\)"):
        write_readout(tmp_path / "out", {"caa": wrong}, primary="caa")
    with pytest.raises(SolverInputError, match="primary method 'pca' not among"):
        write_readout(tmp_path / "out", {"caa": _readout()}, primary="pca")
    assert list(tmp_path.iterdir()) == []


def test_triage_report_lists_every_concept():
    quality = {
        name: {
            "triage": t,
            "middle_layer": 8,
            "n_positive_stories": 3,
            "nearest_concepts": [["other", 0.25]],
            "layers": {"8": {"first_pc_variance_ratio": 0.8, "best_neuron_cosine": None, "ridge_r2": 0.1}},
        }
        for name, t in (("anger", "clean low-dim circuit"), ("joy", "fragmented"))
    }
    text = triage_report(quality)
    assert "| anger | clean low-dim circuit | 3 | 0.800 | n/a | 0.100 | other (0.25) | n/a |" in text
    assert "Triage counts: clean low-dim circuit: 1, fragmented: 1" in text
    assert "No held-out split" in text and "- **joy**: n/a (fewer than two positives)" in text
