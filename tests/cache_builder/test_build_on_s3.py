"""A cache on S3 (a real S3 server on 127.0.0.1) builds, resumes, appends, verifies and solves as one on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from actcache.actcache_cli import main
from actcache.cache_builder.corpus import DEMO_CORPUS
from actcache.storage import open_cache, verify_cache
from actcache.storage.backends import open_backend
from safetensors.numpy import load_file

ACTCACHE = [sys.executable, "-m", "actcache.actcache_cli"]
REPO_ROOT = Path(__file__).resolve().parents[2]


def _build(model_dir: Path, corpus: Path, out: str) -> list[str]:
    return ACTCACHE + ["build", "--model", str(model_dir), "--corpus", str(corpus), "--out", out, "--layers", "1,3",
                       "--unit-tokens", "256", "--batch-size", "4", "--max-length", "24", "--no-progress"]


def _assert_same_content(a: str | Path, b: str | Path) -> None:
    left, right = open_cache(a), open_cache(b)
    assert sorted(d.key for d in left.documents()) == sorted(d.key for d in right.documents())
    for doc in left.documents():
        np.testing.assert_array_equal(left.token_ids(doc.key), right.token_ids(doc.key))
        assert left.text(doc.key) == right.text(doc.key)
        for hook in left.hooks:
            for layer in left.layers:
                np.testing.assert_array_equal(left.activations(hook, layer, doc.key),
                                              right.activations(hook, layer, doc.key))


def test_sigkilled_build_on_s3_resumes_to_the_cache_a_disk_build_makes(tiny_llama_dir: Path, tmp_path: Path,
                                                                      s3_url: str) -> None:
    url = f"{s3_url}/lab/demo"
    process = subprocess.Popen(_build(tiny_llama_dir, DEMO_CORPUS, url) + ["--lease-seconds", "3"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    commits = open_backend(url)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(commits.list_prefix("commits/")) < 3:
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    partial = open_cache(url).n_documents
    assert 0 < partial < 200

    rerun = subprocess.run(_build(tiny_llama_dir, DEMO_CORPUS, url), capture_output=True, text=True, check=True)
    assert f"reused {partial} documents" in rerun.stdout
    assert verify_cache(url).ok
    time.sleep(3)  # the killed writer's lease on its unfinished segment lapses
    left = open_cache(url).info()["uncommitted_segments"]
    gc = subprocess.run(ACTCACHE + ["gc", url], capture_output=True, text=True, check=True)
    assert f"deleted {left} uncommitted segment(s)" in gc.stdout
    assert open_cache(url).info()["uncommitted_segments"] == 0
    assert verify_cache(url).ok  # gc removed only what no commit names

    disk = tmp_path / "disk"
    assert main(_build(tiny_llama_dir, DEMO_CORPUS, str(disk))[len(ACTCACHE):]) == 0
    _assert_same_content(url, disk)
    info = json.loads(subprocess.run(ACTCACHE + ["info", url, "--json"], capture_output=True, text=True,
                                     check=True).stdout)
    assert (info["path"], info["documents"], info["snapshot"]["unfolded_commits"]) == (url, open_cache(disk)
                                                                                        .n_documents, 0)


def test_solve_and_sweep_on_s3_give_the_results_of_disk(tiny_llama_dir: Path, tiny_sentiment_cache: Path,
                                                        tmp_path: Path, s3_url: str, capsys) -> None:
    """The sentiment corpus built on S3 equals the shared disk build of it bit for bit; an append of it computes
    nothing; solve and sweep read both to the same numbers."""
    url, corpus = f"{s3_url}/sentiment", REPO_ROOT / "tests" / "data" / "sentiment.jsonl"
    build = ["build", "--model", str(tiny_llama_dir), "--corpus", str(corpus), "--out", url, "--layers", "1,-1",
             "--no-progress"]  # the arguments of the `tiny_sentiment_cache` build
    assert main(build) == 0
    _assert_same_content(url, tiny_sentiment_cache)
    assert main(build) == 0
    assert "built 0 documents" in capsys.readouterr().out
    results = {}
    for name, cache in (("s3", url), ("disk", str(tiny_sentiment_cache))):
        solve, sweep = tmp_path / f"solve-{name}", tmp_path / f"sweep-{name}"
        labels = ["--label-field", "sentiment", "--positive", "positive"]
        assert main(["solve", "--cache", cache, "--out", str(solve), *labels]) == 0
        assert main(["sweep", "--cache", cache, "--out", str(sweep), *labels, "--methods", "caa,subspace", "--poolings",
                     "last"]) == 0
        results[name] = (load_file(str(solve / "readout.safetensors")),
                         json.loads((sweep / "comparison.json").read_text()))
    (s3_readout, s3_sweep), (disk_readout, disk_sweep) = results["s3"], results["disk"]
    assert s3_readout.keys() == disk_readout.keys()
    for key in s3_readout:
        np.testing.assert_array_equal(s3_readout[key], disk_readout[key])
    for key in ("variants", "layers", "concepts", "cosine", "heldout_mean", "heldout_per_concept"):
        assert s3_sweep[key] == disk_sweep[key], key
