"""Labels as a layer beside the activations: versioned, and replaced without recomputing anything.

A document's activations depend only on what the model saw (its key: text, tokenizer, truncation); its labels
(concept, role, split, pair...) are annotations. Version 0 is the metadata each commit record carried when the
document was first built. Every later version is one JSON file `annotations/<version>.json` that gives some
documents their whole new metadata; reading overlays the versions in order, so the newest version that names a
document wins, and any older state stays readable (`open_cache(path, annotations=N)`). Versions are published
like commit records (temp file, fsync, exclusive link): a crashed labeller leaves no half version, and labelling
never touches the activations. docs/FORMAT.md is the spec.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .backends.backend import StorageBackend
from .backends.backend_url import open_backend
from .commit_log import CommitLog
from .errors import CacheError, CorruptCacheError
from .fingerprint import canonical_json
from .layout import ANNOTATIONS, annotation_name

__all__ = ["AnnotationVersion", "AnnotationLog", "RelabelResult", "apply_versions", "check_versions", "merge_metas",
           "relabel"]

_PUBLISH_ATTEMPTS = 100  # versions that other labellers may publish between our listing and our link


@dataclass(frozen=True)
class AnnotationVersion:
    """One published version: when, from what, and the documents it relabels (key -> whole metadata)."""

    version: int
    created: float
    source: str
    documents: dict[str, dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        from .layout import FORMAT_VERSION

        return {"format_version": FORMAT_VERSION, "version": self.version, "created": self.created,
                "source": self.source, "documents": self.documents}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnnotationVersion:
        documents = data["documents"]
        if not isinstance(documents, dict) or not all(isinstance(m, dict) for m in documents.values()):
            raise TypeError("documents must map each key to its metadata object")
        return cls(int(data["version"]), float(data["created"]), str(data.get("source", "")), documents)

    def summary(self) -> dict[str, Any]:
        """Version, time, source and document count (what `actcache info` lists)."""
        return {"version": self.version, "created": self.created, "source": self.source,
                "documents": len(self.documents)}


def merge_metas(metas: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One document's metadata from every occurrence of its text in one corpus, in corpus order.

    A field with the same value at every occurrence stays a scalar; a field whose values differ becomes a list with
    one entry per occurrence (None where an occurrence lacks it), so no label of a repeated text is lost.
    """
    if len(metas) == 1:
        return dict(metas[0])
    out: dict[str, Any] = {}
    for name in dict.fromkeys(n for m in metas for n in m):
        values = [m.get(name) for m in metas]
        out[name] = values[0] if all(v == values[0] for v in values) else values
    return out


def apply_versions(base: Mapping[str, dict[str, Any]],
                   versions: Sequence[AnnotationVersion]) -> dict[str, dict[str, Any]]:
    """Metadata of every document of `base` (key -> version-0 metadata) with `versions` applied in order."""
    out = dict(base)  # the records' own dicts, as the reader always handed them out: no copy per document
    for version in versions:
        for key, meta in version.documents.items():
            if key in out:
                out[key] = meta
    return out


class AnnotationLog:
    """The annotation versions of one cache (a folder of put-if-absent JSON records, like `commits/`)."""

    def __init__(self, backend: StorageBackend) -> None:
        self._log = CommitLog(backend, ANNOTATIONS)

    def versions(self) -> list[int]:
        """Published version numbers, ascending (version 0, the commit records, is implicit); a stray file of
        another name is no version (`check_versions` reports it)."""
        stems = (name.removesuffix(".json") for name in self._log.names())
        return sorted(int(stem) for stem in stems if stem.isdigit())

    def read(self, version: int) -> AnnotationVersion:
        name = annotation_name(version)
        try:
            return AnnotationVersion.from_dict(self._log.get(name))
        except FileNotFoundError:
            raise CacheError(f"annotation version {version} does not exist: this cache has versions "
                             f"{[0, *self.versions()]} (`actcache info` lists them)") from None
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise CorruptCacheError(
                f"{ANNOTATIONS}/{name} is not a valid annotation version ({error!r}): restore it from a backup, or "
                f"move it away and relabel with `actcache label`; the activations are not affected"
            ) from None

    def overlay(self, base: Mapping[str, dict[str, Any]], upto: int | None = None) -> dict[str, dict[str, Any]]:
        """Metadata of every document of `base` (key -> version-0 metadata) as of version `upto` (None: newest)."""
        return apply_versions(base, self.read_upto(upto))

    def read_upto(self, upto: int | None = None) -> list[AnnotationVersion]:
        """Every version up to `upto` (None: the newest), oldest first; an `upto` that does not exist is refused."""
        versions = self.versions()
        if upto is not None and upto != 0 and upto not in versions:
            self.read(upto)  # raises, naming the versions that exist
        return [self.read(v) for v in versions if upto is None or v <= upto]

    def publish(self, documents: Mapping[str, Mapping[str, Any]], source: str) -> AnnotationVersion:
        """Write the next version atomically and exclusively; a concurrent labeller's version is never overwritten."""
        for _ in range(_PUBLISH_ATTEMPTS):
            number = max(self.versions(), default=0) + 1
            version = AnnotationVersion(number, time.time(), source, {k: dict(v) for k, v in documents.items()})
            if self._log.put_if_absent(annotation_name(number), version.to_dict()):
                return version
        raise CacheError(f"could not publish an annotation version after {_PUBLISH_ATTEMPTS} attempts (other "
                         f"labellers kept publishing first): rerun the command")


@dataclass(frozen=True)
class RelabelResult:
    """What a relabel did: documents whose metadata changed, the version written (None: nothing changed), and
    how many of the given documents are not in the cache (they get their labels when they are built)."""

    relabelled: int
    version: int | None
    not_cached: int


def relabel(cache: str | os.PathLike[str], metas: Mapping[str, Mapping[str, Any]], source: str) -> RelabelResult:
    """Publish a version with every cached document of `metas` (key -> metadata) whose current metadata differs.

    Documents not in `metas` keep theirs; nothing is written when nothing changed.
    """
    from .snapshots import SnapshotLog  # it reads annotation versions itself

    backend = open_backend(cache)
    committed = SnapshotLog(backend).current().index.docs
    log = AnnotationLog(backend)
    current = log.overlay({k: committed[k].record.meta for k in metas if k in committed})
    changed = {k: dict(m) for k, m in metas.items() if k in current and canonical_json(m) != canonical_json(current[k])}
    version = log.publish(changed, source).version if changed else None
    return RelabelResult(len(changed), version, sum(k not in committed for k in metas))


def check_versions(backend: StorageBackend) -> list[tuple[str, str]]:
    """(file, what is wrong and the fix) for every file of `annotations/` that does not read as the version its
    name says: `actcache verify` lists them all, where a reader stops at the first."""
    log = AnnotationLog(backend)
    problems = []
    for name in CommitLog(backend, ANNOTATIONS).names():
        where, stem = f"{ANNOTATIONS}/{name}", name.removesuffix(".json")
        if not stem.isdigit():
            problems.append((where, "not an annotation version (those are named <version>.json): move it out of "
                                    f"{ANNOTATIONS}/"))
            continue
        try:
            version = log.read(int(stem))
        except CacheError as error:
            problems.append((where, str(error)))
            continue
        if version.version != int(stem):
            problems.append((where, f"holds version {version.version} under the name of version {int(stem)}: restore "
                                    f"it from a backup, or move it away and relabel with `actcache label`"))
    return problems
