"""One pipeline stage: a contiguous range of decoder layers on its own device, writing its own captures.

The stage is a plain class; `cluster.pipeline` makes it a Ray actor with the resources and restart policy it
knows. It holds its layers resident and serves any number of builds (caches) of its model. For each unit in
flight it keeps one open `SegmentWriter` that fills only its own layers' arrays, so no two stages ever touch the
same chunk. That state lives in memory: a restarted stage has lost its open segments and refuses to continue one
it did not start (`StageRestarted`), so the driver redoes the whole unit.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from typing import Any

import ray
import torch
from actcache.cache_builder.capture import capture_range
from actcache.cache_builder.model_source import ResolvedModel
from actcache.cache_builder.partial_load import load_layers
from actcache.storage import ArrayManifest, CacheFingerprint, CacheWriter
from actcache.storage.layout import activation_name

__all__ = ["CaptureJob", "StageRestarted", "StageSpec", "StageStats"]


class StageRestarted(RuntimeError):
    """This stage process was restarted since the unit began: its part of the unit is lost; redo the unit."""


@dataclass(frozen=True)
class StageSpec:
    """Where a stage sits in its pipeline: layers [first, stop), whether it is the last, its CPU threads."""

    index: int
    first: int
    stop: int
    dtype: str
    last: bool
    threads: int = 1

    @property
    def embeds(self) -> bool:
        return self.first == 0


@dataclass(frozen=True)
class CaptureJob:
    """The cache a build writes: every micro-batch names it, so a restarted stage re-attaches by itself."""

    cache_path: str
    fingerprint: dict[str, Any]


class _Attached:
    """A stage's view of one cache: its writer, and the captured layers and arrays that fall in its range."""

    def __init__(self, job: CaptureJob, spec: StageSpec, layer_modules: dict[int, Any]) -> None:
        fingerprint = CacheFingerprint.from_dict(job.fingerprint)
        if fingerprint.dtype != spec.dtype:
            raise ValueError(f"this pipeline runs {spec.dtype}, the cache is {fingerprint.dtype}: start one in "
                             f"{fingerprint.dtype}")
        self.writer = CacheWriter.open(job.cache_path, fingerprint)
        self.hooks = fingerprint.capture.hooks
        self.captured = {i: layer_modules[i] for i in fingerprint.capture.layers if spec.first <= i < spec.stop}
        self.names = [activation_name(h, i) for h in self.hooks for i in self.captured]
        self.segments: dict[str, tuple[Any, int]] = {}  # segment id -> (SegmentWriter, next batch index)


@dataclass(frozen=True)
class StageStats:
    """What a stage loaded and where: checked by tests (partial loading) and shown by the benchmark."""

    index: int
    pid: int
    node_id: str
    gpu_ids: tuple[str, ...]
    device: str
    layers: tuple[int, int]
    keys_read: tuple[str, ...]
    bytes_read: int
    param_bytes: int
    peak_rss_bytes: int


def _device() -> str:
    """`cuda` when Ray gave this actor a GPU that torch can see (Ray sets CUDA_VISIBLE_DEVICES), else `cpu`."""
    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


class _PipelineStage:
    def __init__(self, spec: StageSpec, model: dict[str, Any]) -> None:
        torch.set_num_threads(spec.threads)
        self.spec = spec
        self.device = _device()
        loaded = load_layers(ResolvedModel.from_dict(model), range(spec.first, spec.stop), embed=spec.embeds,
                             dtype=spec.dtype, device=self.device)
        self.stack = loaded.stack
        self.jobs: dict[str, _Attached] = {}  # cache path -> attachment (a cache has one fingerprint)
        params = sum(p.numel() * p.element_size() for p in self.stack.parameters())
        context = ray.get_runtime_context()
        self.stats = StageStats(spec.index, os.getpid(), context.get_node_id(), tuple(map(str, ray.get_gpu_ids())),
                                self.device, (spec.first, spec.stop), loaded.keys_read, loaded.bytes_read, params,
                                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)

    def ready(self) -> StageStats:
        """Answers once the layers are loaded: the driver waits for every stage before sending work."""
        return self.stats

    def forward(self, job: CaptureJob, segment_id: str, batch_index: int, x: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor | int:
        """Run this stage's layers on one micro-batch (token ids on stage 0, hidden states after), append the
        captured real-token rows to the segment, and return the hidden states for the next stage (the last
        stage returns its row count instead: nobody needs its output)."""
        attached = self._attached(job)
        writer = self._segment(attached, segment_id, batch_index)
        mask = attention_mask.to(self.device)  # (B, T)
        hidden, rows = capture_range(self.stack, x.to(self.device), mask, self.spec.first, self.spec.stop,
                                     attached.captured, attached.hooks, embed=self.spec.embeds)
        for name, values in rows.items():
            writer.append(name, values.cpu())  # (n_real, width)
        if self.spec.last:
            return int(mask.sum())
        return hidden.cpu()

    def finish(self, job: CaptureJob, segment_id: str) -> list[ArrayManifest]:
        """Flush and close this stage's arrays of a segment: what the driver needs to commit the unit."""
        writer, _ = self._attached(job).segments.pop(segment_id, (None, 0))
        if writer is None:
            raise StageRestarted(f"stage {self.spec.index} has no open segment {segment_id}: it was restarted")
        return writer.close()

    def abort(self, job: CaptureJob, segment_id: str) -> None:
        """Drop a segment the driver gave up on (its unit is redone under a new segment)."""
        writer, _ = self._attached(job).segments.pop(segment_id, (None, 0))
        if writer is not None:
            writer.abort()

    def _attached(self, job: CaptureJob) -> _Attached:
        if job.cache_path not in self.jobs:
            self.jobs[job.cache_path] = _Attached(job, self.spec, self.stack.layer_modules)
        return self.jobs[job.cache_path]

    def _segment(self, attached: _Attached, segment_id: str, batch_index: int) -> Any:
        writer, expected = attached.segments.get(segment_id, (None, 0))
        if batch_index != expected:
            raise StageRestarted(f"stage {self.spec.index} got batch {batch_index} of segment {segment_id} but "
                                 f"expected batch {expected}: it was restarted mid-unit")
        if writer is None:
            writer = attached.writer.segment_writer(segment_id, attached.names)
        attached.segments[segment_id] = (writer, batch_index + 1)
        return writer
