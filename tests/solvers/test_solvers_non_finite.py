"""Non-finite input never reaches a readout: the solve refuses with one line naming the documents, hook and layer;
a missing chunk is refused before its NaN fill is read; Readout, LayerPass and the subspace SVD refuse NaN too."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from actcache import actcache_cli
from actcache.solvers import Readout, SolverInputError, write_readout
from actcache.solvers.labels import story_labels
from actcache.solvers.layer_pass import LayerPass, PassPlan
from actcache.solvers.pooling import parse_pooling
from actcache.solvers.subspace import trajectory_basis
from actcache.storage.backends import open_backend
from actcache.storage.chunk_codec import ChunkEncoder
from actcache.storage.layout import activation_name, chunk_key
from actcache.storage.root import child_array, open_root
from job_fixtures import random_cache, story_metas


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    metas = story_metas(3, 4, 3)
    return random_cache(tmp_path / "cache", metas, [3 + i % 5 for i in range(len(metas))], concept_shift=2.0)


def _segment_and_rows(path: Path, key: str) -> tuple[str, int]:
    """The segment holding document `key`, and its first row there."""
    for commit in (path / "commits").glob("*.json"):
        record, start = json.loads(commit.read_text()), 0
        for doc in record["documents"]:
            if doc["key"] == key:
                return record["segment"], start
            start += doc["n_tokens"]
    raise KeyError(key)


def _poison(path: Path, key: str, hook: str, layer: int, value: float) -> None:
    """Put `value` in the document's first row, re-encoded with a valid checksum (what a model overflow leaves)."""
    segment, row = _segment_and_rows(path, key)
    name = activation_name(hook, layer)
    backend = open_backend(path)
    group, _ = open_root(backend)
    array = child_array(group, f"segments/{segment}/{name}")
    rows = int(array.chunks[0])
    block = np.asarray(array[row // rows * rows:(row // rows + 1) * rows]).copy()
    block[row % rows, 0] = value
    ChunkEncoder(array, backend, f"segments/{segment}/{name}").write(row // rows, block)


def _solve_error(capsys, cache: Path, out: Path, *extra: str) -> str:
    assert actcache_cli.main(["solve", "--cache", str(cache), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("actcache: error: ") and "\n" not in err, err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))
    return err


@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_solve_refuses_non_finite_activations_and_writes_no_readout(cache, tmp_path, capsys, value) -> None:
    _poison(cache, "doc000005", "resid_post", 3, value)
    err = _solve_error(capsys, cache, tmp_path / "out", "--methods", "caa,subspace", "--pooling", "mean")
    assert "resid_post layer 3: non-finite values (NaN/inf) in documents doc000005 of" in err
    assert f"actcache verify {cache}" in err


def test_solve_refuses_non_finite_attn_z_for_heads(cache, tmp_path, capsys) -> None:
    _poison(cache, "doc000002", "attn_z", 1, np.inf)
    err = _solve_error(capsys, cache, tmp_path / "out", "--methods", "caa,heads")
    assert "attn_z layer 1: non-finite values (NaN/inf) in documents doc000002 of" in err


def test_solve_refuses_a_missing_chunk(cache, tmp_path, capsys) -> None:
    segment, _ = _segment_and_rows(cache, "doc000000")
    os.remove(cache / "segments" / segment / activation_name("resid_post", 1) / chunk_key(0))
    err = _solve_error(capsys, cache, tmp_path / "out")
    assert "resid_post layer 1: chunk(s) 0 of committed unit unit0 are missing" in err
    assert "doc000000" in err and f"actcache verify {cache}" in err


def test_sweep_refuses_non_finite_activations(cache, tmp_path, capsys) -> None:
    _poison(cache, "doc000007", "resid_post", 1, np.nan)
    out = tmp_path / "sweep"
    assert actcache_cli.main(["sweep", "--cache", str(cache), "--out", str(out)]) == 2
    assert "resid_post layer 1: non-finite values (NaN/inf) in documents doc000007" in capsys.readouterr().err
    assert not out.exists()


def test_readout_refuses_non_finite_vectors_and_leaves_nothing(tmp_path) -> None:
    vectors = torch.randn(2, 4)
    vectors[1, 2] = float("nan")
    with pytest.raises(SolverInputError, match=r"caa layer 5: non-finite values in the vector of \['joy'\]"):
        write_readout(tmp_path / "out", {"caa": Readout(("anger", "joy"), (5,), 4, {5: vectors})}, primary="caa")
    assert list(tmp_path.iterdir()) == []


@dataclass(frozen=True)
class _Doc:
    key: str
    meta: dict[str, object]


def test_layer_pass_refuses_non_finite_rows_naming_the_document() -> None:
    labels = story_labels([_Doc("a", {"concept": "c", "role": "positive"}), _Doc("b", {"role": "baseline"})])
    lp = LayerPass(labels, 3, PassPlan((parse_pooling("mean"),), subspace_concepts=(0,)), source="resid_post layer 8")
    lp.feed(0, np.ones((2, 3), np.float32))
    rows = np.ones((2, 3), np.float32)
    rows[1, 1] = np.inf
    with pytest.raises(SolverInputError, match="resid_post layer 8: document b has non-finite values"):
        lp.feed(1, rows)


def test_the_subspace_basis_refuses_nan_instead_of_falling_back() -> None:
    h = torch.randn(5, 4)
    h[2, 1] = float("nan")
    with pytest.raises(SolverInputError, match="non-finite"):
        trajectory_basis(h)


def test_a_real_cache_with_an_overflowed_document_is_refused_naming_its_text(tiny_llama_dir, tmp_path,
                                                                           capsys) -> None:
    from actcache.storage import open_cache
    from job_fixtures import build, story_jsonl

    cache = build(tiny_llama_dir, story_jsonl(tmp_path / "corpus.jsonl"), tmp_path / "cache", "1,2")
    reader = open_cache(cache)
    doc = next(d for d in reader.documents() if d.meta.get("scenario") == "station" and d.meta.get("concept"))
    _poison(cache, doc.key, "resid_post", 2, np.inf)
    err = _solve_error(capsys, cache, tmp_path / "out", "--methods", "caa,subspace")
    assert f'resid_post layer 2: non-finite values (NaN/inf) in documents {doc.key} "At the station the train' in err
