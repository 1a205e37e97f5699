"""Names inside a cache group (docs/FORMAT.md is the spec; keep the two in step)."""

from __future__ import annotations

import math

from .hook_points import HOOKS  # the hook table lives in storage/hook_points.py

__all__ = [
    "FORMAT_VERSION",
    "HOOKS",
    "ROOT_ATTR",
    "SEGMENTS",
    "COMMITS",
    "CLAIMS",
    "ANNOTATIONS",
    "SNAPSHOTS",
    "TAGS",
    "JOURNAL",
    "TOKEN_IDS",
    "DOC_OFFSETS",
    "TEXT_BYTES",
    "TEXT_OFFSETS",
    "activation_name",
    "parse_activation_name",
    "segment_path",
    "commit_name",
    "annotation_name",
    "snapshot_name",
    "chunk_tokens_for",
    "CHUNK_DIR",
    "chunk_key",
]

FORMAT_VERSION = 1
ROOT_ATTR = "actcache"  # root group attribute holding {format_version, fingerprint}
SEGMENTS = "segments"
COMMITS = "commits"
CLAIMS = "claims"  # who is writing what, with a lease (storage/claims.py)
ANNOTATIONS = "annotations"  # label versions beside the activations (storage/annotations.py)
SNAPSHOTS = "snapshots"  # commit records folded into manifests (storage/snapshots.py)
TAGS = "tags"  # named snapshots (storage/snapshots.py)
JOURNAL = "journal"  # a time-ordered marker per commit: readers list only recent ones (storage/commit_journal.py)
TOKEN_IDS = "token_ids"
DOC_OFFSETS = "doc_offsets"
# each document's UTF-8 text (absent from segments built with --no-text): bytes, and CSR offsets into them
TEXT_BYTES = "text_bytes"
TEXT_OFFSETS = "text_offsets"
CHUNK_TARGET_BYTES = 1 << 20
CHUNK_DIR = "c"  # zarr v3's default chunk key prefix: chunk i of a (rows, width) array is c/<i>/0


def activation_name(hook: str, layer: int) -> str:
    """Array path of one (hook, layer) inside a segment group."""
    return f"{hook}/layer_{layer}"


def parse_activation_name(name: str) -> tuple[str, int]:
    hook, _, layer = name.partition("/layer_")
    return hook, int(layer)


def segment_path(segment_id: str) -> str:
    return f"{SEGMENTS}/{segment_id}"


def commit_name(unit_id: str) -> str:
    return f"{unit_id}.json"


def snapshot_name(sequence: int) -> str:
    """File of snapshot manifest `sequence` (zero-padded: names sort as sequences)."""
    return f"{sequence:08d}.json"


def annotation_name(version: int) -> str:
    """File of annotation version `version` (zero-padded: names sort as versions)."""
    return f"{version:06d}.json"


def chunk_tokens_for(width: int, itemsize: int, target_bytes: int = CHUNK_TARGET_BYTES) -> int:
    """Rows per chunk: the smallest power of two whose chunk holds at least `target_bytes` (~1 MiB)."""
    rows = max(1, math.ceil(target_bytes / (width * itemsize)))
    return 1 << (rows - 1).bit_length()


def chunk_key(chunk_index: int) -> str:
    """Key of row chunk `chunk_index` inside an activation array's folder (zarr v3 default encoding, one column
    chunk): writers store chunks under it directly, `verify` and read checks look for it."""
    return f"{CHUNK_DIR}/{chunk_index}/0"
