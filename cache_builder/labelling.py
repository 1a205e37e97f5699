"""`actcache label`: give a cache's documents the labels of a corpus, as a new annotation version.

No model and no tokenizer are needed: a document's key follows from its text and the cache's own header
(tokenizer digest, max length, truncation side), so relabelling a cache of any size costs one pass over the corpus.
"""

from __future__ import annotations

from pathlib import Path

from actcache.storage.annotations import RelabelResult, relabel
from actcache.storage.backends import open_backend
from actcache.storage.fingerprint import digest
from actcache.storage.root import open_root

from .corpus import CorpusError, load_corpus
from .planning import corpus_metadata

__all__ = ["label_cache"]


def label_cache(cache: str | Path, corpus: str | Path) -> RelabelResult:
    """Publish the corpus's labels for every cached document whose labels differ (newest version wins)."""
    _, fingerprint = open_root(open_backend(cache))
    docs = load_corpus(corpus)
    metas = corpus_metadata([d.text for d in docs], [d.meta for d in docs],
                            tokenizer_digest=digest(fingerprint.tokenizer),
                            max_length=fingerprint.capture.max_length,
                            truncation_side=fingerprint.capture.truncation_side)
    result = relabel(cache, metas, str(corpus))
    if result.not_cached == len(metas):
        raise CorpusError(
            f"none of the {len(metas)} documents of {corpus} is in {cache}: label the corpus the cache was built "
            f"from (same texts; keys also depend on the tokenizer and --max-length), or build this one first"
        )
    return result
