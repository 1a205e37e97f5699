"""What runs a unit for the service: the model in this process, or a resident Ray `Backbone` (pipeline stages).

An engine is a list of unit runners, one per worker thread of the job runner: each computes and commits the
documents of one service unit at a time, as the claimed units (`ClaimedUnits`, the same per-bucket claims as every
builder) that the job runner hands it, calling `on_batch` with the documents computed so far. The in-process
engine has one (one model); the Ray engine has one per replica, each driving its own S-stage pipeline.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any

from actcache.cache_builder.build import PreparedBuild
from actcache.cache_builder.claimed_units import ClaimedUnits
from actcache.cache_builder.planning import TokenizedDoc, Unit

__all__ = ["OnBatch", "UnitRunner", "local_engine", "RayEngine"]

OnBatch = Callable[[Sequence[TokenizedDoc]], None]
UnitRunner = Callable[[Unit, ClaimedUnits, OnBatch], None]  # the service's unit, its documents' claimed units


def local_engine(prepared: PreparedBuild, model: Any) -> list[UnitRunner]:
    """One runner over a model loaded in this process (the path `actcache build` takes, so its bits are equal)."""
    from actcache.cache_builder.build import run_claimed
    from actcache.cache_builder.runner import DecoderStack

    stack = DecoderStack.from_causal_lm(model, range(prepared.deepest_layer + 1))

    def run(unit: Unit, work: ClaimedUnits, on_batch: OnBatch) -> None:
        run_claimed(prepared, work, stack, on_batch)

    return [run]


class RayEngine:
    """`replicas` resident pipelines of `stages` Ray actors; a stage that dies is restarted by Ray and its units
    redone (cluster/pipeline.py), so a job goes on with nothing lost or stored twice."""

    def __init__(self, prepared: PreparedBuild, stages: int, replicas: int, address: str | None) -> None:
        import math
        import os

        from actcache.cluster.pipeline import Backbone, stage_ranges
        from actcache.cluster.ray_connect import ClusterError, connect, resolve_address

        if stages < 1 or replicas < 1:
            raise ClusterError(f"--stages {stages} --replicas {replicas}: both must be at least 1")
        ranges = stage_ranges(prepared.model, prepared.deepest_layer, stages)
        self._owns_ray = connect(resolve_address(address),  # refuses an address it cannot join, in one line
                                 num_cpus=max(os.cpu_count() or 1, math.ceil(stages * replicas)))
        # one Backbone per replica, so that each worker thread drives its own pipeline
        self.backbones = [Backbone(prepared.model, ranges, 1, dtype=prepared.settings.dtype) for _ in range(replicas)]
        self._prepared = prepared
        for replica, backbone in enumerate(self.backbones):  # which process to look at when a stage misbehaves
            for stage in backbone.stats:
                print(f"replica {replica} stage {stage.index}: layers {stage.layers[0]}-{stage.layers[1] - 1} on "
                      f"{stage.device}, pid {stage.pid}, node {stage.node_id[:12]}", file=sys.stderr, flush=True)

    def runners(self) -> list[UnitRunner]:
        def runner(backbone: Any) -> UnitRunner:
            def run(unit: Unit, work: ClaimedUnits, on_batch: OnBatch) -> None:
                # the pipeline commits whole units: progress moves by unit
                report = backbone.build(dataclasses.replace(self._prepared, units=[unit]), work=work,
                                        on_unit=lambda done: on_batch(done.docs))
                if report.redone_units:
                    print(f"unit {unit.unit_id} redone after a stage restart", file=sys.stderr, flush=True)
            return run

        return [runner(b) for b in self.backbones]

    def shutdown(self) -> None:
        import ray

        for backbone in self.backbones:
            backbone.shutdown()
        if self._owns_ray:
            ray.shutdown()
