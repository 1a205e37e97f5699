"""A build killed with SIGKILL resumes to the same cache; a larger corpus appends only what is missing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from actcache.cache_builder.build import BuildSettings, build_cache
from actcache.cache_builder.corpus import DEMO_CORPUS
from actcache.storage import open_cache, verify_cache
from build_fixtures import TEXTS, write_jsonl_corpus

ACTCACHE = [sys.executable, "-m", "actcache.actcache_cli"]


def _build_command(model_dir: Path, corpus: Path, out: Path) -> list[str]:
    # --lease-seconds: a rerun takes the killed build's document claims over once they expire (60 s by default)
    return ACTCACHE + ["build", "--model", str(model_dir), "--corpus", str(corpus), "--out", str(out),
                       "--layers", "1,3", "--unit-tokens", "256", "--batch-size", "4", "--max-length", "24",
                       "--no-progress", "--lease-seconds", "10"]


def _assert_same_content(a: Path, b: Path) -> None:
    left, right = open_cache(a), open_cache(b)
    assert {d.key for d in left.documents()} == {d.key for d in right.documents()}
    assert left.n_documents == len(left.documents()) == right.n_documents
    for doc in left.documents():
        for hook in left.hooks:
            for layer in left.layers:
                np.testing.assert_array_equal(left.activations(hook, layer, doc.key),
                                              right.activations(hook, layer, doc.key))


def test_sigkilled_build_resumes_to_identical_cache(tiny_llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    command = _build_command(tiny_llama_dir, DEMO_CORPUS, out)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    commits = out / "commits"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(commits.glob("*.json"))) < 3:
        assert process.poll() is None, process.stdout.read().decode()
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    partial = open_cache(out).n_documents
    assert 0 < partial < 200

    rerun = subprocess.run(command, capture_output=True, text=True, check=True)
    assert f"reused {partial} documents" in rerun.stdout
    assert verify_cache(out).ok

    reference = tmp_path / "uninterrupted"
    subprocess.run(_build_command(tiny_llama_dir, DEMO_CORPUS, reference), check=True, capture_output=True)
    _assert_same_content(out, reference)


def test_append_computes_only_missing_documents(tiny_llama_dir: Path, tmp_path: Path) -> None:
    settings = dict(model=str(tiny_llama_dir), out=tmp_path / "cache", layers="1,3", progress=False)
    first = build_cache(BuildSettings(corpus=write_jsonl_corpus(tmp_path / "a.jsonl", TEXTS[:4]), **settings))
    assert (first.built_documents, first.reused_documents) == (4, 0)
    second = build_cache(BuildSettings(corpus=write_jsonl_corpus(tmp_path / "b.jsonl", TEXTS), **settings))
    assert (second.built_documents, second.reused_documents) == (len(TEXTS) - 4, 4)
    again = build_cache(BuildSettings(corpus=write_jsonl_corpus(tmp_path / "b.jsonl", TEXTS), **settings))
    assert (again.built_documents, again.reused_documents) == (0, len(TEXTS))
    cache = open_cache(tmp_path / "cache")
    assert cache.n_documents == len(TEXTS) and verify_cache(tmp_path / "cache").ok
