"""Names inside a cache group (docs/FORMAT.md is the spec; keep the two in step)."""

from __future__ import annotations

import math

__all__ = [
    "FORMAT_VERSION",
    "ROOT_ATTR",
    "SEGMENTS",
    "COMMITS",
    "TOKEN_IDS",
    "DOC_OFFSETS",
    "activation_name",
    "parse_activation_name",
    "segment_path",
    "commit_name",
    "chunk_tokens_for",
]

FORMAT_VERSION = 1
ROOT_ATTR = "actcache"  # root group attribute holding {format_version, fingerprint}
SEGMENTS = "segments"
COMMITS = "commits"
TOKEN_IDS = "token_ids"
DOC_OFFSETS = "doc_offsets"
CHUNK_TARGET_BYTES = 1 << 20


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


def chunk_tokens_for(width: int, itemsize: int, target_bytes: int = CHUNK_TARGET_BYTES) -> int:
    """Rows per chunk: the smallest power of two whose chunk holds at least `target_bytes` (~1 MiB)."""
    rows = max(1, math.ceil(target_bytes / (width * itemsize)))
    return 1 << (rows - 1).bit_length()
