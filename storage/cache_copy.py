"""`actcache cp SRC DST`: copy a cache, or a slice of it, between disks and buckets: incremental and verified.

A unit is copied as its objects (segment metadata, token ids, texts, the chosen arrays' chunks), each chunk's
crc32c checked on the way without decoding it (a stored chunk is its zstd payload followed by the payload's crc32c,
4 bytes little endian: storage/chunk_codec.py), then published with its commit record last (`put_if_absent`), as a
writer would. A unit whose record DST already has is skipped and objects DST already holds at the same size are
not sent again, so a rerun after an interruption copies only the rest. Objects move on parallel threads (obstore
and file reads release the GIL). A slice (`hooks`, `layers`) gets the fingerprint a build of that selection
would have, so the copy appends with `actcache build --hooks/--layers` of the same selection. `where` keeps the
documents whose labels match: a unit whose documents all match is copied as objects, a unit with only some is
rewritten through `CacheWriter` with just those documents' rows. The copy is folded into a snapshot at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backends.backend import StorageBackend
    from .fingerprint import CacheFingerprint
    from .index import CommitRecord
    from .reader import CacheReader
    from .writer import CacheWriter

__all__ = ["CopyReport", "copy_cache", "register", "sliced_fingerprint"]

COPY_THREADS = 16  # objects in flight: enough to hide an object store's latency, few enough for a laptop
_PENDING_PER_THREAD = 8  # objects queued per thread before the oldest unit is waited for (bounded memory)


def register(subparsers: Any) -> None:
    cp = subparsers.add_parser("cp", help="copy a cache (or some hooks, layers, documents of it) between disks and "
                                          "s3://, incrementally, verifying every chunk checksum")
    cp.add_argument("src", help="cache folder or s3://bucket/prefix to copy from")
    cp.add_argument("dst", help="folder or s3://bucket/prefix to copy to (created, or appended to when it holds a "
                                "cache of the same selection)")
    cp.add_argument("--hooks", help="only these hooks (comma list, as `build --hooks`)")
    cp.add_argument("--layers", help="only these layers (e.g. 8,15 or -1), as `build --layers`")
    cp.add_argument("--tag", help="copy exactly the state this tag of SRC pinned")
    cp.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE",
                    help="only documents whose label FIELD is VALUE (repeat for several fields: all must match)")
    cp.add_argument("--threads", type=int, default=COPY_THREADS, help="objects copied at once")
    cp.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    cp.set_defaults(func=run_cp)


@dataclass
class CopyReport:
    units_copied: int = 0  # copied as objects
    units_rewritten: int = 0  # only some documents matched `where`: rewritten with those
    units_present: int = 0  # DST had them already
    objects: int = 0  # objects sent (objects DST already held are not counted)
    bytes: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class _UnitCopy:
    """One unit to copy as objects: its DST record, the keys (with sizes) DST lacks, and the chunks DST holds at
    the right size (left by an interrupted copy: checked there, sent again only when damaged)."""

    record: CommitRecord
    keys: dict[str, int]
    held: tuple[str, ...]


def sliced_fingerprint(source: CacheFingerprint, hooks: str | None, layers: str | None) -> CacheFingerprint:
    """The fingerprint a build capturing `hooks` and `layers` (as `build` parses them) would give: the source's
    model, tokenizer, dtype and cut, with only the chosen hooks (in the order given), layers, widths and attrs."""
    from .errors import CacheError
    from .hook_points import expand_hooks
    from .selection import model_layer_count, select_layers

    chosen_hooks = source.capture.hooks
    if hooks is not None:
        chosen_hooks = expand_hooks([h.strip() for h in hooks.split(",") if h.strip()])
        other_hooks = [h for h in chosen_hooks if h not in source.capture.hooks]
        if other_hooks:
            raise CacheError(f"hook(s) {other_hooks} are not in the source cache: it holds "
                             f"{', '.join(source.capture.hooks)}")
    chosen_layers = source.capture.layers
    if layers is not None:
        chosen_layers, other_layers = select_layers(layers, source.capture.layers, model_layer_count(source))
        if other_layers or not chosen_layers:
            raise CacheError(f"layer(s) {other_layers} are not in the source cache: it holds layers "
                             f"{list(source.capture.layers)}")
    capture = dataclasses.replace(source.capture, hooks=tuple(chosen_hooks), layers=tuple(chosen_layers))
    return dataclasses.replace(source, capture=capture,
                               widths={h: source.widths[h] for h in chosen_hooks},
                               hook_attrs={h: a for h, a in source.hook_attrs.items() if h in chosen_hooks})


def copy_cache(src: str, dst: str, *, hooks: str | None = None, layers: str | None = None, tag: str | None = None,
               where: Mapping[str, str] | None = None, threads: int = COPY_THREADS, progress: bool = False,
               ) -> CopyReport:
    """Copy the committed contents of `src` (or exactly tag `tag`'s) to `dst`, restricted to `hooks`, `layers`
    and the documents matching `where`; see the module docstring. Refused before anything is written when DST
    holds a cache of another fingerprint; a damaged source chunk stops the copy naming it, its unit uncommitted."""
    from tqdm import tqdm

    from .backends.backend_url import open_backend
    from .errors import CacheError
    from .reader import open_cache
    from .writer import CacheWriter

    started = time.perf_counter()
    reader = open_cache(src, tag=tag)
    if reader.url == open_backend(dst).url:
        raise CacheError(f"cp: {src} and {dst} are the same cache: give another destination")
    fingerprint = sliced_fingerprint(reader.fingerprint, hooks, layers)
    selected = _select_units(reader, _matching_documents(reader, where))  # refusals come before DST is touched
    writer = CacheWriter.open(dst, fingerprint, reader.model_source)
    report = CopyReport()
    try:
        present = writer.index().units
        whole = [record for record, keys in selected if record.unit_id not in present and keys is None]
        partial = [(record, keys) for record, keys in selected if keys is not None and _unit_id(keys) not in present]
        report.units_present = len(selected) - len(whole) - len(partial)
        with ThreadPoolExecutor(threads, thread_name_prefix="actcache-cp") as pool:
            copies = list(pool.map(lambda r: _unit_copy(reader.backend, writer.backend, r, fingerprint), whole))
            total = sum(sum(c.keys.values()) for c in copies)
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="cp", dynamic_ncols=True,
                      disable=not progress or not total) as bar:
                _copy_units(pool, reader.backend, writer.backend, copies, report, bar.update, threads)
        for record, docs in partial:
            _rewrite_unit(reader, writer, record, docs)
            report.units_rewritten += 1
        _copy_annotations(reader, writer.backend)
        writer.fold()
    finally:
        writer.close()
    report.seconds = time.perf_counter() - started
    return report


def _matching_documents(reader: CacheReader, where: Mapping[str, str] | None) -> set[str] | None:
    """Keys of the documents whose labels (at the reader's annotation version) match `where`; None: all."""
    if not where:
        return None
    from .pooled import select_documents

    return {d.key for d in select_documents(reader.documents(), dict(where))}


def _select_units(reader: CacheReader, keep: set[str] | None) -> list[tuple[CommitRecord, list[str] | None]]:
    """Each unit with a selected document: (record, None) to copy it whole as objects, or (record, keys) to
    rewrite it with only those of its documents."""
    from .errors import CacheError

    selected: list[tuple[CommitRecord, list[str] | None]] = []
    seen: set[str] = set()
    for record in reader.commit_records():  # commit order: a key's first unit is the one readers use
        keys = [d.key for d in record.documents]
        if keep is not None:  # a duplicate of an earlier unit's document is copied with that unit only
            keys = [k for k in keys if k in keep and k not in seen]
        seen.update(d.key for d in record.documents)
        if len(keys) == len(record.documents):
            selected.append((record, None))
        elif keys:
            if reader.store_as != "exact":
                raise CacheError(f"--where keeps {len(keys)} of the {len(record.documents)} documents of unit "
                                 f"{record.unit_id}, and a {reader.store_as} cache's units can only be copied "
                                 "whole (re-encoding lossy codes would change them): select by a label that keeps "
                                 "whole units, or copy without --where")
            selected.append((record, keys))
    return selected


def _unit_id(keys: list[str]) -> str:
    """A unit's id from its documents' keys, as the build planner makes it (cache_builder/planning.py)."""
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:32]


def _unit_copy(src: StorageBackend, dst: StorageBackend, record: CommitRecord,
               fingerprint: CacheFingerprint) -> _UnitCopy:
    """The DST record of a unit copied as objects (only the chosen arrays, the DST fingerprint) and the keys of
    its segment still to send: one listing of the segment in SRC and one in DST."""
    from .errors import CorruptCacheError
    from .layout import chunk_key, segment_path

    arrays = {name: m for name, m in record.arrays.items() if _captured(name, fingerprint)}
    folder = f"{segment_path(record.segment)}/"
    groups = {name.split("/")[0] for name in record.arrays}  # hook groups (`resid_post`, `attn_z.scale`)
    kept_groups = {name.split("/")[0] for name in arrays}
    source = {key: info.size for key, info in src.list_info(folder).items()
              if _wanted(key[len(folder):], groups, kept_groups, arrays)}
    for name, manifest in arrays.items():
        for i in range(manifest.n_chunks):
            if f"{folder}{name}/{chunk_key(i)}" not in source:
                raise CorruptCacheError(f"{src.url}/{folder}{name}/{chunk_key(i)} is missing but unit "
                                        f"{record.unit_id} is committed: run `actcache verify {src.url}` to list the "
                                        "damaged documents; nothing of that unit was copied")
    found = dst.list_info(folder)
    held = {key for key, size in source.items() if _is_chunk(key) and key in found and found[key].size == size}
    keys = {key: size for key, size in source.items() if key not in held}
    return _UnitCopy(dataclasses.replace(record, fingerprint=fingerprint.digest, arrays=arrays), keys,
                     tuple(sorted(held)))


def _captured(array_name: str, fingerprint: CacheFingerprint) -> bool:
    """Whether an activation array (or a side array of its lossy codes, `attn_z.scale/layer_3`) is of a hook and
    layer that `fingerprint` captures."""
    from .layout import parse_activation_name
    from .lossy import side_owner

    hook, layer = parse_activation_name(array_name)
    return side_owner(hook) in fingerprint.capture.hooks and layer in fingerprint.capture.layers


def _wanted(rest: str, groups: set[str], kept_groups: set[str], arrays: Mapping[str, Any]) -> bool:
    """Whether the object at `rest` (relative to the segment) belongs to the copy: everything but the arrays (and
    hook groups) of hooks and layers left out."""
    parts = rest.split("/")
    if parts[0] not in groups:  # segment metadata, token ids, offsets, texts
        return True
    if parts[0] not in kept_groups:
        return False
    return len(parts) < 3 or f"{parts[0]}/{parts[1]}" in arrays  # `<hook>/zarr.json`, or an array's objects


def _copy_units(pool: ThreadPoolExecutor, src: StorageBackend, dst: StorageBackend, copies: list[_UnitCopy],
                report: CopyReport, progress: Callable[[int], object], threads: int) -> None:
    """Send every unit's objects on `pool`, publishing each unit's record once all of its objects are in DST;
    at most `threads * _PENDING_PER_THREAD` objects are queued at a time."""
    in_flight: deque[tuple[_UnitCopy, list[Future[int | None]]]] = deque()
    queued = 0

    def finish_oldest() -> None:
        nonlocal queued
        copy, futures = in_flight.popleft()
        # result() re-raises a checksum or transfer error: the unit stays uncommitted
        sent = [size for size in (future.result() for future in futures) if size is not None]
        report.bytes += sum(sent)
        report.objects += len(sent)
        queued -= len(futures)
        _publish(dst, copy.record)
        report.units_copied += 1

    def send(key: str) -> int | None:
        data = src.get(key)
        _check_chunk(src, key, data)
        dst.put_unpublished(key, data)
        progress(len(data))
        return len(data)

    def send_unless_intact(key: str) -> int | None:
        return None if _chunk_intact(dst.get(key)) else send(key)

    try:
        for copy in copies:
            futures = [pool.submit(send, key) for key in copy.keys]
            futures += [pool.submit(send_unless_intact, key) for key in copy.held]
            in_flight.append((copy, futures))
            queued += len(futures)
            while queued > threads * _PENDING_PER_THREAD and len(in_flight) > 1:
                finish_oldest()
        while in_flight:
            finish_oldest()
    except BaseException:
        for _, futures in in_flight:
            for future in futures:
                future.cancel()
        raise


def _is_chunk(key: str) -> bool:
    """Chunk objects (`.../c/...`) carry a crc32c; metadata (`zarr.json`) has none."""
    from .layout import CHUNK_DIR

    return f"/{CHUNK_DIR}/" in key


def _chunk_intact(data: bytes) -> bool:
    """Whether a stored chunk ends with the crc32c of what precedes it (checked without decoding)."""
    import crc32c

    view = memoryview(data)
    return len(data) >= 4 and crc32c.crc32c(view[:-4]) == int.from_bytes(view[-4:], "little")


def _check_chunk(src: StorageBackend, key: str, data: bytes) -> None:
    from .errors import CorruptCacheError

    if _is_chunk(key) and not _chunk_intact(data):
        raise CorruptCacheError(f"{src.url}/{key}: crc32c checksum mismatch: the source chunk is damaged; run "
                                f"`actcache verify {src.url}` to list the affected documents (its unit was not "
                                "committed in the copy)")


def _publish(dst: StorageBackend, record: CommitRecord) -> None:
    """A unit's commit record, after its objects are durable (False from put_if_absent: another copy was first)."""
    from .commit_journal import publish_commit
    from .layout import segment_path

    dst.sync(f"{segment_path(record.segment)}/")
    publish_commit(dst, record)


def _rewrite_unit(reader: CacheReader, writer: CacheWriter, record: CommitRecord, keys: list[str]) -> None:
    """A new unit of `keys` (some of `record`'s documents) written through the writer: token ids, texts and the
    chosen arrays' stored rows, bit for bit."""
    import numpy as np

    from .layout import activation_name

    by_key = {d.key: d for d in record.documents}
    docs = [by_key[k] for k in keys]
    texts = reader.texts(keys, strict=False)
    segment = writer.begin_segment(_unit_id(keys), docs, np.concatenate([reader.token_ids(k) for k in keys]),
                                   None if None in texts else [t for t in texts if t is not None])
    try:
        rows = writer.segment_writer(segment)
        for spec in writer.array_specs():
            name = activation_name(spec.hook, spec.layer)
            for key in keys:  # the cache's own dtype (bf16 bits, int16 expert ids): stored exactly as read
                rows.append(name, reader.tensor(spec.hook, spec.layer, key))
        manifests = rows.close()
    except BaseException:
        writer.abandon(segment)
        raise
    writer.commit(_unit_id(keys), segment, docs, manifests)


def _copy_annotations(reader: CacheReader, dst: StorageBackend) -> None:
    """The label versions up to the reader's (a tag's pinned version, else all): same numbers, same bytes."""
    from .errors import CacheError
    from .layout import ANNOTATIONS, annotation_name

    src = reader.backend
    upto = reader.snapshot.annotation_version
    for key in src.list_prefix(f"{ANNOTATIONS}/"):
        stem = key[len(ANNOTATIONS) + 1:].removesuffix(".json")
        if not stem.isdigit() or key != f"{ANNOTATIONS}/{annotation_name(int(stem))}":
            continue
        if upto is not None and int(stem) > upto:
            continue
        data = src.get(key)
        if not dst.put_if_absent(key, data) and dst.get(key) != data:
            raise CacheError(f"{dst.url}/{key} holds another label version than {src.url}/{key}: the destination "
                             "was relabelled on its own; copy into a new destination")


def _parse_where(items: list[str]) -> dict[str, str]:
    from .errors import InputError

    where: dict[str, str] = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise InputError(f"--where {item!r}: write FIELD=VALUE, e.g. --where split=test")
        where[field] = value
    return where


def run_cp(args: argparse.Namespace) -> int:
    report = copy_cache(args.src, args.dst, hooks=args.hooks, layers=args.layers, tag=args.tag,
                        where=_parse_where(args.where), threads=args.threads, progress=not args.no_progress)
    rate = report.bytes / report.seconds / 1e6 if report.seconds else 0.0
    print(f"copied {report.units_copied} unit(s) ({report.objects} objects, {report.bytes / 1e6:.1f} MB, "
          f"{rate:.1f} MB/s), rewrote {report.units_rewritten} partly selected unit(s), "
          f"{report.units_present} already in {args.dst}")
    return 0
