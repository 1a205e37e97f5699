"""Document texts inside a segment: UTF-8 bytes compressed like every other array, CSR offsets per document.

Stored with the activations so that a score, an outlier or a neighbour can be quoted as the sentence it is,
without the corpus at hand. A cache whose corpus is private is built with `--no-text`: its segments have no
text arrays, and asking for a text says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr

from .errors import CacheError
from .layout import TEXT_BYTES, TEXT_OFFSETS
from .root import child_array

__all__ = ["TextsMissingError", "write_texts", "read_texts", "has_texts"]

_TEXT_CHUNK_BYTES = 1 << 20


class TextsMissingError(CacheError):
    """The document's segment was built with --no-text."""


def write_texts(group: zarr.Group, texts: Sequence[str], compressors: Any) -> None:
    """Add the texts of a segment's documents (in document order) as `text_bytes` + `text_offsets`."""
    encoded = [t.encode("utf-8") for t in texts]
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in encoded])]).astype(np.int64)  # (n_docs + 1,)
    data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    group.create_array(TEXT_BYTES, data=data, chunks=(max(1, min(len(data), _TEXT_CHUNK_BYTES)),),
                       compressors=compressors, dimension_names=["text_byte"])
    group.create_array(TEXT_OFFSETS, data=offsets, compressors=compressors, dimension_names=["doc_edge"])


def has_texts(group: zarr.Group) -> bool:
    return TEXT_OFFSETS in group and TEXT_BYTES in group


def read_texts(group: zarr.Group, indices: Sequence[int]) -> list[str]:
    """Texts of the documents at `indices` (positions within the segment); each byte range is read once."""
    if not has_texts(group):
        raise TextsMissingError(
            f"segment {group.path} was built with --no-text: its documents' texts are not in the cache; "
            "look them up in the corpus by their keys, or rebuild without --no-text"
        )
    offsets = np.asarray(child_array(group, TEXT_OFFSETS)[:])
    data = child_array(group, TEXT_BYTES)
    wanted = sorted(set(indices))
    lo, hi = int(offsets[wanted[0]]), int(offsets[wanted[-1] + 1])
    block = bytes(np.asarray(data[lo:hi]))  # one read covering every wanted text
    found = {i: block[int(offsets[i]) - lo:int(offsets[i + 1]) - lo].decode("utf-8") for i in wanted}
    return [found[i] for i in indices]
