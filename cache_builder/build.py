"""The single-process build: corpus -> tokens -> units -> forward with hooks -> compressed, committed segments.

`prepare_build` does everything that needs no forward pass (validation, fingerprint, dedup, plan) and is shared
with the distributed builder in `cluster/`; `build_cache` runs the units in this process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from actcache.storage import CacheFingerprint, CacheWriter, CaptureSpec, DocRecord
from actcache.storage.annotations import relabel
from actcache.storage.claims import Claim, Lease
from actcache.storage.committed_keys import CommittedKeys
from actcache.storage.devices import resolve_device
from actcache.storage.fingerprint import digest
from actcache.storage.hook_points import check_layer_kinds, hook_widths
from actcache.storage.selection import select_layers
from actcache.storage.store_modes import OUTLIERS
from tqdm import tqdm

from .capture import capture_range, check_hooks
from .claimed_units import ClaimedUnits
from .corpus import Document, load_corpus
from .model_source import (
    ResolvedModel,
    head_shape,
    is_moe_layer,
    load_model,
    load_tokenizer,
    model_dims,
    model_fingerprint,
    num_layers,
    resolve_model,
    tokenizer_fingerprint,
    weight_files,
)
from .planning import TokenizedDoc, Unit, pending_units, plan_units, tokenize_documents
from .runner import DecoderStack, pad_batch
from .settings import BuildSettings, BuildSettingsError
from .transformers_quiet import quiet_transformers

__all__ = ["BuildSettings", "BuildReport", "PreparedBuild", "parse_layers", "prepare_build", "open_build",
           "build_cache", "begin_unit", "capture_batch", "run_unit", "claim_units", "run_claimed", "finish_claimed",
           "pad_token_id", "ProgressCallback"]


@dataclass
class BuildReport:
    built_documents: int = 0
    built_tokens: int = 0
    reused_documents: int = 0
    units: int = 0
    seconds: float = 0.0
    truncated: list[tuple[str, int, int]] = field(default_factory=list)  # (source, original, kept)
    relabelled: int = 0  # cached documents whose labels the corpus changed (a new annotation version)
    by_other_writers: int = 0  # documents to build that another writer on the same cache committed meanwhile
    taken_over: list[Claim] = field(default_factory=list)  # document claims of dead writers this build took over

    def summary(self, out: str | Path) -> str:
        rate = self.built_tokens / self.seconds if self.seconds else 0.0
        lines = [
            f"built {self.built_documents} documents ({self.built_tokens} tokens, {rate:.0f} tok/s) in {self.units} "
            f"units into {out}; reused {self.reused_documents} documents already cached"
        ]
        if self.by_other_writers:
            lines.append(f"{self.by_other_writers} documents were computed by other writers on this cache meanwhile")
        if self.taken_over:
            lines.append(f"took over {len(self.taken_over)} document bucket claim(s) of writers that died (e.g. "
                         f"{self.taken_over[0].describe()})")
        if self.truncated:
            examples = ", ".join(f"{s} ({o} -> {k} tokens)" for s, o, k in self.truncated[:3])
            lines.append(f"truncated {len(self.truncated)} documents longer than --max-length, e.g. {examples}")
        if self.relabelled:
            lines.append(f"relabelled {self.relabelled} documents already cached (their corpus labels changed; "
                         f"`actcache info` lists the label versions)")
        return "\n".join(lines)


@dataclass
class PreparedBuild:
    settings: BuildSettings
    model: ResolvedModel
    config: dict[str, Any]
    tokenizer: Any
    fingerprint: CacheFingerprint
    writer: CacheWriter
    units: list[Unit]
    report: BuildReport
    docs: list[TokenizedDoc] = field(default_factory=list)  # the whole corpus, cached documents included

    @property
    def deepest_layer(self) -> int:
        return self.fingerprint.capture.layers[-1]

    def tokenize(self, corpus: Sequence[Document]) -> list[TokenizedDoc]:
        """The corpus's distinct documents, keyed and truncated as this cache's capture spec says."""
        return _tokenize(corpus, self.tokenizer, self.fingerprint.tokenizer, self.settings)


def parse_layers(layers: str | Sequence[int], n_layers: int) -> tuple[int, ...]:
    """'all', '8,15', '-1' or a list -> sorted unique layer indices, each checked against the model."""
    wanted, bad = select_layers(layers, range(n_layers), n_layers)
    if bad:
        raise BuildSettingsError(f"layer(s) {bad} out of range: this model has layers 0..{n_layers - 1} "
                                 f"(or -{n_layers}..-1 from the end)")
    return wanted


def prepare_build(settings: BuildSettings) -> PreparedBuild:
    """Validate every input before the cache is touched, then open it (checking its fingerprint) and plan."""
    prepared, docs = open_build(settings, load_corpus(settings.corpus))
    units, reused = pending_units(plan_units(docs, unit_tokens=settings.unit_tokens, batch_size=settings.batch_size),
                                  prepared.writer.index().docs)
    prepared.units, prepared.docs = units, docs
    prepared.report = BuildReport(reused_documents=reused, truncated=[
        (str(d.meta.get("source", d.key)), d.original_tokens, d.n_tokens) for u in units for d in u.docs
        if d.original_tokens > d.n_tokens
    ])
    prepared.report.relabelled = relabel(settings.out, {d.key: d.meta for d in docs}, str(settings.corpus)).relabelled
    return prepared


def open_build(settings: BuildSettings, corpus: Sequence[Document] = ()) -> tuple[PreparedBuild, list[TokenizedDoc]]:
    """Validate the settings and tokenize `corpus` before the cache is touched, then open the cache (checking its
    fingerprint); nothing is planned yet. A resident service opens once and plans each job with `tokenize`."""
    hooks = check_hooks(settings.hooks)
    if settings.padding_side not in ("left", "right"):
        raise BuildSettingsError(f"padding side must be left or right, not {settings.padding_side!r}")
    model = resolve_model(settings.model)
    tokenizer = load_tokenizer(model)
    model_fp = model_fingerprint(model, settings.dtype)
    config = model_fp["config"]
    layers = parse_layers(settings.layers, num_layers(config))
    tok_fp = tokenizer_fingerprint(tokenizer)
    capture = CaptureSpec(hooks, layers, settings.max_length, settings.truncation_side, settings.store_as,
                          OUTLIERS.get(settings.store_as, 0))
    widths = hook_widths(hooks, model_dims(config))
    check_layer_kinds(hooks, layers, lambda layer: is_moe_layer(config, layer))
    n_heads, head_dim = head_shape(config)
    fingerprint = CacheFingerprint(
        model=model_fp,
        tokenizer=tok_fp,
        dtype=settings.dtype,
        capture=capture,
        widths=widths,
        hook_attrs={"attn_z": {"n_heads": n_heads, "head_dim": head_dim}} if "attn_z" in hooks else {},
    )
    docs = _tokenize(corpus, tokenizer, tok_fp, settings)
    writer = CacheWriter.open(settings.out, fingerprint, _model_source(model), lease_s=settings.lease_s)
    return PreparedBuild(settings, model, config, tokenizer, fingerprint, writer, [], BuildReport()), docs


def _tokenize(corpus: Sequence[Document], tokenizer: Any, tokenizer_fp: dict[str, Any],
              settings: BuildSettings) -> list[TokenizedDoc]:
    if not corpus:  # a tokenizer refuses an empty batch
        return []
    return tokenize_documents(
        [d.text for d in corpus], [d.meta for d in corpus], tokenizer,
        tokenizer_digest=digest(tokenizer_fp), max_length=settings.max_length, truncation_side=settings.truncation_side,
    )


def _model_source(model: ResolvedModel) -> dict[str, Any]:
    files = [] if model.gguf_file else weight_files(model)
    return {"path": str(model.path), "gguf_file": model.gguf_file, "name": model.name, "weight_files": files}


def claim_units(prepared: PreparedBuild, docs: Sequence[TokenizedDoc] | None = None,
                on_wait: Callable[[list[Claim]], None] | None = None, lease: Lease | None = None) -> ClaimedUnits:
    """The units of `docs` (default: the whole corpus) that this writer claims on `prepared`'s cache, with its lease
    length and unit plan: every builder (this process, the Ray pipeline, the service) computes through one.
    `lease`: one shared by this writer's threads (see `ClaimedUnits`)."""
    settings = prepared.settings
    return ClaimedUnits(prepared.docs if docs is None else docs, CommittedKeys(prepared.writer.backend),
                        prepared.writer.claims, settings.lease_s, unit_tokens=settings.unit_tokens,
                        batch_size=settings.batch_size, on_wait=on_wait, lease=lease)


def run_claimed(prepared: PreparedBuild, work: ClaimedUnits, stack: DecoderStack,
                on_batch: Callable[[Sequence[TokenizedDoc]], None] | None = None) -> int:
    """Compute and commit in this process every unit `work` hands out; returns how many were committed."""
    pad_id, capture = pad_token_id(prepared.tokenizer), prepared.fingerprint.capture
    side = prepared.settings.padding_side
    units = 0
    for unit in work:
        batches = (capture_batch(stack, b, capture, pad_id, side) for b in unit.batches())
        run_unit(prepared, unit, batches, on_batch, work.check)
        work.committed(unit)
        units += 1
    return units


def finish_claimed(work: ClaimedUnits, report: BuildReport, to_build: int) -> None:
    """After the last commit: refuse a build that left documents uncommitted; count what other writers built and
    which dead writers' claims this one took over. `to_build`: documents missing from the cache when planned."""
    work.check_complete()
    report.by_other_writers = to_build - report.built_documents
    report.taken_over = work.taken_over


def capture_batch(stack: DecoderStack, docs: Sequence[TokenizedDoc], capture: CaptureSpec, pad_id: int,
                  padding_side: str) -> dict[str, torch.Tensor]:
    """One padded forward up to the deepest captured layer, on the stack's device; returns real-token rows per
    array on the CPU (what the writer compresses), docs in order."""
    input_ids, attention_mask = (t.to(stack.device) for t in pad_batch([d.ids for d in docs], pad_id, padding_side))
    captured = {i: stack.layer_modules[i] for i in capture.layers}
    _, rows = capture_range(stack, input_ids, attention_mask, 0, capture.layers[-1] + 1, captured, capture.hooks,
                            embed=True)
    return {name: values.cpu() for name, values in rows.items()}  # (n_real, width) each


def begin_unit(prepared: PreparedBuild, unit: Unit) -> tuple[str, list[DocRecord]]:
    """Begin a unit's segment (token ids, and texts unless --no-text); return its id and the unit's records."""
    records = [DocRecord(d.key, d.n_tokens, d.meta, d.original_tokens) for d in unit.docs]
    texts = [d.text for d in unit.docs] if prepared.settings.store_text else None
    ids = np.concatenate([d.ids for d in unit.docs])
    return prepared.writer.begin_segment(unit.unit_id, records, ids, texts), records


def run_unit(prepared: PreparedBuild, unit: Unit, batches: Iterator[dict[str, torch.Tensor]],
             on_batch: Callable[[Sequence[TokenizedDoc]], None] | None = None,
             check: Callable[[Unit], None] | None = None) -> bool:
    """Write one unit's captures as a segment and commit it; the segment stays invisible if anything fails.

    `check(unit)` runs right before the commit (`ClaimedUnits.check`: the unit's document claims are still held).
    """
    writer = prepared.writer
    segment, records = begin_unit(prepared, unit)
    seg_writer = writer.segment_writer(segment)
    try:
        for batch_docs, rows in zip(unit.batches(), batches, strict=True):
            for name, values in rows.items():
                seg_writer.append(name, values)
            if on_batch is not None:
                on_batch(batch_docs)
        manifests = seg_writer.close()
        if check is not None:
            check(unit)
    except BaseException:
        seg_writer.abort()
        writer.abandon(segment)  # deletes the partial segment and releases its claim
        raise
    return writer.commit(unit.unit_id, segment, records, manifests)


ProgressCallback = Callable[[BuildReport, int, int], None]  # (report so far, documents to compute, tokens to compute)


def build_cache(settings: BuildSettings, model: Any = None, on_progress: ProgressCallback | None = None) -> BuildReport:
    """Build (or complete, or extend) a cache in this process.

    `model`: a causal LM already loaded with `settings.dtype` on `settings.device` (a resident service runs every
    job through this same path without reloading it); None loads it here. `on_progress` is called once the work is
    planned and after every batch.
    """
    with quiet_transformers(not settings.progress):  # --no-progress hides transformers' own bars and logs too
        return _build_cache(settings, model, on_progress)


def _build_cache(settings: BuildSettings, model: Any, on_progress: ProgressCallback | None) -> BuildReport:
    device = resolve_device(settings.device)  # an unavailable device is refused before the cache is touched
    prepared = prepare_build(settings)
    with prepared.writer:  # however the build ends: fold what it committed, release its claims
        return _run_units(prepared, model, device, on_progress)


def _run_units(prepared: PreparedBuild, model: Any, device: str, on_progress: ProgressCallback | None,
               ) -> BuildReport:
    settings = prepared.settings
    report = prepared.report
    total_tokens = sum(u.n_tokens for u in prepared.units)
    total_docs = sum(len(u.docs) for u in prepared.units)
    if on_progress is not None:
        on_progress(report, total_docs, total_tokens)
    if not prepared.units:
        return report
    if model is None:
        model = load_model(prepared.model, settings.dtype, device)
    started = time.perf_counter()
    stack = DecoderStack.from_causal_lm(model, range(prepared.deepest_layer + 1))
    with tqdm(total=total_tokens, unit="tok", unit_scale=True, desc="build", disable=not settings.progress,
              dynamic_ncols=True) as bar:
        def advance(batch_docs: Sequence[TokenizedDoc]) -> None:
            report.built_documents += len(batch_docs)
            report.built_tokens += sum(d.n_tokens for d in batch_docs)
            bar.update(sum(d.n_tokens for d in batch_docs))
            bar.set_postfix_str(f"docs {report.built_documents}/{total_docs}")
            if on_progress is not None:
                report.seconds = time.perf_counter() - started
                on_progress(report, total_docs, total_tokens)

        def waiting(holders: list[Claim]) -> None:
            bar.set_postfix_str(f"waiting for {len(holders)} document bucket(s) claimed by other writers "
                                f"({holders[0].describe()})")

        with claim_units(prepared, on_wait=waiting) as work:
            report.units += run_claimed(prepared, work, stack, advance)
            finish_claimed(work, report, total_docs)
        bar.update(total_tokens - report.built_tokens)
    report.seconds = time.perf_counter() - started
    return report


def pad_token_id(tokenizer: Any) -> int:
    """The id that fills padding: pad, else eos, else 0 (padding is never stored, any id works)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0
