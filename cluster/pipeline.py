"""The distributed build: R data-parallel replicas of an S-stage Ray pipeline, writing the same cache as
`actcache.cache_builder.build.build_cache`.

The driver does everything that needs no model (`prepare_build`: validation, fingerprint, dedup against the cache,
the plan), claims the documents it computes (`claim_units`, the same per-bucket claims as the single-process
builder, so builders of either kind on one cache compute each document once), begins one segment per unit and
commits it once every stage has closed its own arrays, releasing a group's claims once its units are committed.
Stages receive token ids (stage 0) or hidden states (ObjectRefs chained stage to stage), so only hidden states
travel, and several micro-batches are in flight per replica so that the stages work at the same time. A stage
that dies is restarted by Ray (`max_restarts`); every unit it had not committed is redone under a new segment (the
old one is abandoned: deleted, its claim released), so no document is lost or stored twice. Killing the driver
loses only uncommitted units: rerunning resumes from the commit records, like the single-process builder.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from actcache.cache_builder.build import (
    BuildReport,
    PreparedBuild,
    begin_unit,
    claim_units,
    finish_claimed,
    pad_token_id,
    parse_layers,
    prepare_build,
)
from actcache.cache_builder.claimed_units import POLL_SECONDS, ClaimedUnits
from actcache.cache_builder.model_source import ResolvedModel, num_layers, resolve_model, weight_files
from actcache.cache_builder.partial_load import layer_bytes
from actcache.cache_builder.planning import Unit
from actcache.cache_builder.runner import pad_batch
from actcache.cache_builder.settings import BuildSettings
from actcache.cluster._stage import CaptureJob, StageRestarted, StageSpec, StageStats, _PipelineStage
from actcache.cluster.partition import partition_layers
from actcache.cluster.ray_connect import ClusterError, check_joinable, connect, resolve_address
from actcache.storage import DocRecord
from ray.exceptions import ObjectLostError, RayActorError, RayTaskError

__all__ = ["MAX_RESTARTS", "Backbone", "PipelineReport", "build_distributed", "stage_ranges"]

MAX_RESTARTS = 4  # per stage actor; a unit is tried at most MAX_RESTARTS + 1 times
NOT_NOW = "not now"  # what a replica is told while every remaining document is claimed by another live writer
JOIN_POLL_S = 0.5


@dataclass
class PipelineReport(BuildReport):
    """A build report plus the pipeline's shape, what each stage loaded, and how many units were redone."""

    stages: int = 1
    replicas: int = 1
    redone_units: int = 0
    stage_stats: list[StageStats] = field(default_factory=list)

    def summary(self, out: str | Path) -> str:
        spans = ", ".join(f"{a}-{b - 1}" for a, b in (s.layers for s in self.stage_stats[:self.stages]))
        devices = sorted({s.device for s in self.stage_stats}) or ["-"]
        return (f"{super().summary(out)}\npipeline: {self.replicas} replica(s) x {self.stages} stage(s) (layers "
                f"{spans or '-'}) on {'/'.join(devices)}; {self.redone_units} unit(s) redone after a stage restart")


def stage_ranges(model: ResolvedModel, deepest: int, stages: int) -> list[range]:
    """Contiguous layer ranges covering 0..deepest, balanced by the checkpoint's bytes (stage 0 also embeds)."""
    per_layer, embed = layer_bytes(model, deepest + 1)
    return partition_layers(per_layer, stages, embed)


def build_distributed(settings: BuildSettings, *, stages: int, replicas: int = 1, address: str | None = None,
                      cpus_per_stage: float = 1.0, in_flight: int | None = None) -> PipelineReport:
    """Build (or resume, or extend) a cache with `replicas` pipelines of `stages` Ray actors each.

    `address`: a Ray cluster (`host:port`, `ray://host:port`, `auto`), else `RAY_ADDRESS`, else a local instance.
    A stage gets one GPU when the cluster has one per stage, else runs on CPU with `cpus_per_stage` threads.
    `in_flight`: micro-batches in flight per replica (default 2 per stage). Every input is checked before the
    cache is touched or Ray is started.
    """
    if stages < 1 or replicas < 1:
        raise ClusterError(f"--stages {stages} --replicas {replicas}: both must be at least 1")
    address = resolve_address(address)
    model = resolve_model(settings.model)
    weight_files(model)  # a GGUF model is refused here: stages read safetensors
    config = json.loads((model.path / "config.json").read_text())
    ranges = stage_ranges(model, parse_layers(settings.layers, num_layers(config))[-1], stages)
    if address is not None:
        check_joinable(address)
    prepared = prepare_build(settings)
    if not prepared.units:
        return _report(prepared, stages, replicas)
    started = time.perf_counter()
    owns_ray = connect(address, num_cpus=max(os.cpu_count() or 1, math.ceil(stages * replicas * cpus_per_stage)))
    backbone = None
    try:
        backbone = Backbone(model, ranges, replicas, dtype=settings.dtype, cpus_per_stage=cpus_per_stage)
        with claim_units(prepared) as work:
            report = backbone.build(prepared, in_flight=in_flight, work=work)
    finally:
        prepared.writer.close()  # folds what the driver committed, releases its claims
        if backbone is not None:
            backbone.shutdown()
        if owns_ray:
            ray.shutdown()
    report.seconds = time.perf_counter() - started
    return report


class Backbone:
    """R replicas of an S-stage pipeline holding a model's layers resident, ready to run any number of builds.

    Loading a large model takes minutes; a backbone pays it once (`build_distributed` starts one per build, a
    long-running service keeps one). Needs a connected Ray (`ray_connect.connect`).
    """

    def __init__(self, model: ResolvedModel, ranges: Sequence[range], replicas: int = 1, *, dtype: str = "float32",
                 cpus_per_stage: float = 1.0) -> None:
        n_actors = len(ranges) * replicas
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if 0 < gpus < n_actors:
            raise ClusterError(f"the Ray cluster has {gpus} GPUs but {len(ranges)} stages x {replicas} replicas "
                               f"need {n_actors}: lower --stages/--replicas or add GPU nodes")
        if resources.get("CPU", 0) < n_actors * cpus_per_stage:
            raise ClusterError(f"the Ray cluster has {resources.get('CPU', 0):g} CPUs but {n_actors} stages need "
                               f"{n_actors * cpus_per_stage:g}: lower --stages/--replicas or add nodes")
        stage_cls: Any = ray.remote(_PipelineStage).options(
            num_cpus=cpus_per_stage, num_gpus=1 if gpus else 0, max_restarts=MAX_RESTARTS,
            max_task_retries=0,  # a stage's state is per unit: the retry boundary is the unit (see _Run)
        )
        specs = [StageSpec(index=i, first=r.start, stop=r.stop, dtype=dtype, last=i == len(ranges) - 1,
                           threads=max(1, int(cpus_per_stage))) for i, r in enumerate(ranges)]
        self.model = model
        self.dtype = dtype
        self.ranges = list(ranges)
        self.pipelines: list[list[Any]] = [[stage_cls.remote(spec, model.to_dict()) for spec in specs]
                                           for _ in range(replicas)]
        self.stats: list[StageStats] = ray.get([s.ready.remote() for p in self.pipelines for s in p])

    def build(self, prepared: PreparedBuild, *, replicas: int | None = None, in_flight: int | None = None,
              work: ClaimedUnits | None = None, on_unit: Callable[[Unit], None] | None = None) -> PipelineReport:
        """Run a prepared build's units on the first `replicas` pipelines (default all) and commit them.

        `work`: the claimed units to run instead of `prepared.units` (whose caller then holds their claims): the
        build ends when every document of its corpus is committed, by this build or by another writer. `on_unit`
        is called after each commit.
        """
        deepest = self.ranges[-1].stop - 1
        if prepared.model.path != self.model.path or prepared.settings.dtype != self.dtype:
            raise ClusterError(f"this backbone runs {self.model.path} in {self.dtype}, the build wants "
                             f"{prepared.model.path} in {prepared.settings.dtype}: start a backbone for it")
        if prepared.deepest_layer != deepest:
            raise ClusterError(f"this backbone runs layers 0..{deepest}, the build captures up to layer "
                             f"{prepared.deepest_layer}: start a backbone for layers 0..{prepared.deepest_layer}")
        pipelines = self.pipelines[:replicas or len(self.pipelines)]
        report = _report(prepared, len(self.ranges), len(pipelines))
        report.stage_stats = self.stats
        started = time.perf_counter()
        if prepared.units:
            _Run(prepared, report, pipelines, in_flight or 2 * len(self.ranges), work, on_unit).execute()
            if work is not None:
                finish_claimed(work, report, sum(len(u.docs) for u in prepared.units))
        report.seconds = time.perf_counter() - started
        return report

    def shutdown(self) -> None:
        """Stop every stage actor (no restart)."""
        for pipeline in self.pipelines:
            for stage in pipeline:
                ray.kill(stage, no_restart=True)
        self.pipelines = []


def _report(prepared: PreparedBuild, stages: int, replicas: int) -> PipelineReport:
    return PipelineReport(reused_documents=prepared.report.reused_documents, truncated=prepared.report.truncated,
                          stages=stages, replicas=replicas)


def _stage_lost(error: BaseException) -> bool:
    """Errors that mean a stage process (or the node holding a hidden state) went away: redo the unit."""
    return isinstance(error, RayActorError | ObjectLostError | StageRestarted)  # RayActorError: died, unavailable


def _brief(error: BaseException) -> str:
    """Ray's errors span many lines; ours are one."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200] if lines else ''}"


@dataclass
class _Open:
    """A unit in flight on one replica: its segment, and the stages' `finish` refs once every batch is sent."""

    unit: Unit
    segment: str
    records: list[DocRecord]
    finish: list[Any] | None = None


class _Run:
    """Units shared by the replicas (one driver thread each); begin, commit and redo under one lock. Units come
    from `work` (claimed as they are drawn, one replica thread at a time) or else `prepared.units`; redone units
    come first."""

    def __init__(self, prepared: PreparedBuild, report: PipelineReport, pipelines: list[list[Any]],
                 in_flight: int, work: ClaimedUnits | None = None,
                 on_unit: Callable[[Unit], None] | None = None) -> None:
        from tqdm import tqdm

        self.prepared = prepared
        self.report = report
        self.pipelines = pipelines
        self.in_flight = max(1, in_flight)
        self.pad_id = pad_token_id(prepared.tokenizer)
        self.job = ray.put(CaptureJob(prepared.writer.url, prepared.fingerprint.to_dict()))
        self.work, self.on_unit = work, on_unit
        self.units: Iterator[Unit | None] = work.pending() if work is not None else iter(prepared.units)
        self.redo: deque[Unit] = deque()
        self.drawing = threading.Lock()  # one replica at a time draws (and claims) new units; commits go on meanwhile
        self.attempts: dict[str, int] = {}
        self.lock = threading.Lock()
        self.failed: BaseException | None = None
        total = sum(u.n_tokens for u in prepared.units)
        self.bar = tqdm(total=total, unit="tok", unit_scale=True, desc=f"build {len(pipelines)}x{len(pipelines[0])}",
                        disable=not prepared.settings.progress, dynamic_ncols=True)

    def execute(self) -> None:
        threads = [threading.Thread(target=self._replica, args=(p,), name=f"replica-{i}", daemon=True)
                   for i, p in enumerate(self.pipelines)]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(JOIN_POLL_S)
        except BaseException as error:  # e.g. KeyboardInterrupt: stop the replicas, keep what is committed
            self._fail(error)
            raise
        finally:
            self.bar.close()
        if self.failed is not None:
            raise self.failed

    # -- shared state ---------------------------------------------------------------------------------------------
    def _take(self) -> Unit | str | None:
        """The next unit; NOT_NOW while every remaining document is held by another live writer; None when none
        is left (or the build failed)."""
        with self.lock:
            if self.failed is not None:
                return None
            if self.redo:
                return self.redo.popleft()
        with self.drawing:
            for unit in self.units:  # the next one, if any
                return NOT_NOW if unit is None else unit
        return None

    def _fail(self, error: BaseException) -> None:
        """Stop handing out units; the first error is raised by `execute` (a stage's own error, unwrapped from
        Ray's task error, so e.g. a full disk reads as the storage layer's one-line DiskFullError)."""
        if isinstance(error, RayTaskError) and isinstance(error.cause, Exception):
            error = error.cause
        with self.lock:
            self.failed = self.failed or error

    def _begin(self, unit: Unit) -> _Open:
        with self.lock:
            segment, records = begin_unit(self.prepared, unit)
        return _Open(unit, segment, records)

    def _commit(self, item: _Open, manifests: list[Any]) -> None:
        with self.lock:
            if self.work is not None:
                self.work.check(item.unit)  # its document claims are still ours: nobody else computes them
            self.prepared.writer.commit(item.unit.unit_id, item.segment, item.records, manifests)
            self.report.units += 1
            self.report.built_documents += len(item.unit.docs)
            self.report.built_tokens += item.unit.n_tokens
            self.bar.update(item.unit.n_tokens)
        if self.work is not None:
            self.work.committed(item.unit)
        if self.on_unit is not None:
            self.on_unit(item.unit)

    def _redo(self, units: list[Unit], error: BaseException) -> None:
        with self.lock:
            for unit in reversed(units):
                tries = self.attempts[unit.unit_id] = self.attempts.get(unit.unit_id, 0) + 1
                if tries > MAX_RESTARTS:
                    self.failed = self.failed or ClusterError(
                        f"unit {unit.unit_id} failed {tries} times, last with {_brief(error)}: check the stage "
                        f"logs (ray logs), memory and the model files, then rerun to resume"
                    )
                self.redo.appendleft(unit)
            self.report.redone_units += len(units)

    # -- one replica ----------------------------------------------------------------------------------------------
    def _replica(self, stages: list[Any]) -> None:
        while True:
            opened: deque[_Open] = deque()
            try:
                self._drive(stages, opened)
                return
            except BaseException as error:
                if not _stage_lost(error):
                    self._fail(error)
                    return
                for item in opened:
                    for stage in stages:
                        stage.abort.remote(self.job, item.segment)  # fire and forget: a restarted stage holds nothing
                self._redo([item.unit for item in opened], error)
                if not self._await_restart(stages):
                    return
                self._abandon(opened)

    def _abandon(self, opened: deque[_Open]) -> None:
        """Delete the segments of redone units and release their claims, now rather than when the driver exits.
        Safe once every stage answered `ready` after the failure: an actor runs one caller's tasks in order, so
        no stage writes to these segments any more."""
        with self.lock:
            for item in opened:
                self.prepared.writer.abandon(item.segment)

    def _await_restart(self, stages: list[Any]) -> bool:
        """Wait until Ray has restarted every stage of a replica (reloading takes a while); False if one cannot
        come back (it used up its `max_restarts`), which fails the build."""
        try:  # retried by Ray while the actor restarts: tasks sent meanwhile would fail at once
            ray.get([stage.ready.options(max_task_retries=-1).remote() for stage in stages])
        except BaseException as error:
            self._fail(ClusterError(f"a pipeline stage did not come back after {MAX_RESTARTS} restarts "
                                    f"({_brief(error)}): check the stage logs (ray logs) and memory, then rerun "
                                    f"to resume"))
            return False
        return True

    def _drive(self, stages: list[Any], opened: deque[_Open]) -> None:
        """Send every micro-batch of the next units through the stages, at most `in_flight` at a time; commit
        each unit as soon as all its stages closed their arrays."""
        window: deque[Any] = deque()
        while (unit := self._take()) is not None:
            if isinstance(unit, str):  # commit what is in flight here (it may hold what others wait for), then pause
                ray.get(list(window))
                window.clear()
                self._commit_ready(opened, block=True)
                time.sleep(POLL_SECONDS)
                continue
            item = self._begin(unit)
            opened.append(item)
            for index, docs in enumerate(unit.batches()):
                ids, mask = pad_batch([d.ids for d in docs], self.pad_id, self.prepared.settings.padding_side)
                x: Any = ids
                for stage in stages:
                    x = stage.forward.remote(self.job, item.segment, index, x, mask)
                window.append(x)
                while len(window) >= self.in_flight:
                    ray.get(window.popleft())
                self._commit_ready(opened, block=False)
            item.finish = [stage.finish.remote(self.job, item.segment) for stage in stages]
            self._commit_ready(opened, block=False)
        ray.get(list(window))
        self._commit_ready(opened, block=True)

    def _commit_ready(self, opened: deque[_Open], *, block: bool) -> None:
        while opened and opened[0].finish is not None:
            refs = opened[0].finish
            if not block and len(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) < len(refs):
                return
            manifests = [m for part in ray.get(refs) for m in part]
            self._commit(opened[0], manifests)
            opened.popleft()
