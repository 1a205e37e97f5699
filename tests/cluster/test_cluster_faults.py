"""Real faults: SIGKILL a stage actor's process mid-build, and SIGKILL the driver process and rerun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from actcache.cache_builder.build import prepare_build
from actcache.cache_builder.model_source import resolve_model
from actcache.cluster.pipeline import Backbone, PipelineReport, build_distributed, stage_ranges
from actcache.storage import verify_cache
from actcache.storage.layout import COMMITS
from cluster_helpers import assert_same_cache, settings_for

REPO = Path(__file__).resolve().parents[2]


def _commits(out: Path) -> int:
    folder = out / COMMITS
    return len([p for p in folder.iterdir() if p.suffix == ".json"]) if folder.is_dir() else 0


def _wait_for_commits(out: Path, n: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while _commits(out) < n:
        assert time.monotonic() < deadline, f"no {n} commit(s) in {out} after {timeout:.0f} s"
        time.sleep(0.05)


def test_sigkill_a_stage_mid_build(ray_cluster: object, tiny_moe_dir: Path, corpus: Path, reference: dict[str, Path],
                                   tmp_path: Path) -> None:
    out = tmp_path / "cache"
    prepared = prepare_build(settings_for(tiny_moe_dir, corpus, out))
    model = resolve_model(tiny_moe_dir)
    backbone = Backbone(model, stage_ranges(model, 3, 2), replicas=1)
    result: dict[str, PipelineReport | BaseException] = {}

    def run() -> None:
        try:
            result["report"] = backbone.build(prepared)
        except BaseException as error:  # surfaced by the asserts below
            result["error"] = error

    worker = threading.Thread(target=run)
    try:
        worker.start()
        _wait_for_commits(out, 1)
        assert worker.is_alive() and _commits(out) < len(prepared.units), "the build ended before the kill"
        os.kill(backbone.stats[1].pid, signal.SIGKILL)  # the last stage's process, mid-unit
        worker.join(timeout=300)
        # the redone units' first segments were abandoned at once, not left claimed until the driver exits
        assert [c.subject for c in prepared.writer.claims.claims()] == []
    finally:
        backbone.shutdown()
    assert "error" not in result, result.get("error")
    report = result["report"]
    assert isinstance(report, PipelineReport)
    assert report.redone_units >= 1  # the units the dead stage had in flight were redone under new segments
    assert report.built_documents == 160
    assert verify_cache(out).ok
    assert_same_cache(reference["tiny-qwen3-moe"], out)


_DRIVER = """
import sys
from cluster_helpers import settings_for
from actcache.cluster.pipeline import build_distributed
model, corpus, out, address = sys.argv[1:5]
build_distributed(settings_for(model, corpus, out), stages=2, address=address)
"""


def test_sigkill_the_driver_then_rerun(ray_cluster: object, tiny_moe_dir: Path, corpus: Path,
                                       reference: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cache"
    address = ray_cluster.address  # type: ignore[attr-defined]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{Path(__file__).parent}"}
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER, str(tiny_moe_dir), str(corpus), str(out), address],
                              env=env, cwd=REPO)
    try:
        _wait_for_commits(out, 1)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    done = _commits(out)
    total = len(prepare_build(settings_for(tiny_moe_dir, corpus, out)).units) + done
    assert 1 <= done < total, "the driver finished before it was killed"
    assert verify_cache(out).ok  # what the killed driver left is a valid cache: committed units only
    report = build_distributed(settings_for(tiny_moe_dir, corpus, out), stages=2,
                               address=address)
    assert report.reused_documents > 0 and report.reused_documents + report.built_documents == 160
    assert verify_cache(out).ok
    assert_same_cache(reference["tiny-qwen3-moe"], out)
