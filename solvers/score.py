"""`actcache score`: every document's projection on every concept direction of a readout, as JSON lines.

The step after a solve: which documents does a direction rank highest, and do they read like the concept? One
line per (document, concept, layer): `key`, `text` (null for a cache built with --no-text), `concept`, `layer`,
`score` = pooled activation . unit direction.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from actcache.solvers.errors import SolverInputError
from actcache.solvers.readout import Readout, read_readout
from actcache.storage.pooled import Where
from actcache.storage.selection import model_layer_count, select_layers

__all__ = ["ScoreResult", "score_cache"]


@dataclass(frozen=True)
class ScoreResult:
    out: Path
    documents: int
    concepts: tuple[str, ...]
    layers: tuple[int, ...]

    def summary(self) -> str:
        lines = len(self.concepts) * len(self.layers) * self.documents
        return (f"wrote {lines} scores ({self.documents} documents x {len(self.concepts)} concept(s) x layer(s) "
                f"{', '.join(map(str, self.layers))}) to {self.out}")


def score_cache(cache_path: str | os.PathLike[str], readout_dir: str | os.PathLike[str],
                out: str | os.PathLike[str], *, method: str | None = None, layers: str = "all",
                pooling: str = "last", where: Where | None = None, hook: str = "resid_post") -> ScoreResult:
    """Project each selected document (pooled by `pooling`) on each concept direction of the readout, per layer
    (`all`: every layer of the readout), and write the JSON lines to `out` (written whole, then renamed)."""
    from actcache.storage import open_cache

    reader = open_cache(cache_path)
    readout = _load(Path(readout_dir), method)
    try:
        wanted, missing = select_layers(layers, readout.layers, model_layer_count(reader.fingerprint))
    except ValueError as error:
        raise SolverInputError(str(error)) from None
    if missing:
        raise SolverInputError(f"layer(s) {missing} not in the readout: it has layers {list(readout.layers)}")
    width = reader.width(hook)
    if readout.hidden_size != width:
        raise SolverInputError(f"the readout's vectors have {readout.hidden_size} dimensions but {hook} of the cache "
                               f"has {width}: score with the cache the readout was solved from")
    absent = [layer for layer in wanted if layer not in reader.layers]
    if absent:
        raise SolverInputError(f"layer(s) {absent} of the readout are not in the cache (it holds "
                               f"{list(reader.layers)}): pass --layers with layers of both")
    scores = {}
    keys: list[str] = []
    for layer in wanted:
        vectors = readout.vectors[layer].double().numpy()  # (C, d), unit rows
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)  # float16 rounding leaves |v| ~ 1 +- 1e-3
        scores[layer], keys, _ = reader.pooled(hook, layer, pooling, where, project=unit)  # (n_docs, C)
    texts = reader.texts(keys, strict=False)
    target = Path(out)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as file:
            for i, (key, text) in enumerate(zip(keys, texts, strict=True)):
                for layer in wanted:
                    for c, concept in enumerate(readout.concepts):
                        row = {"key": key, "text": text, "concept": concept, "layer": layer,
                               "score": float(scores[layer][i, c])}
                        file.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return ScoreResult(target, len(keys), readout.concepts, wanted)


def _load(path: Path, method: str | None) -> Readout:
    """The readout of a solve's output folder (its primary method, or `method`), with a one-line error."""
    manifest = path / ("readout.json" if method is None else f"methods/{method}.json")
    if not manifest.is_file():
        raise SolverInputError(f"{manifest} not found: --readout takes the output folder of `actcache solve` or "
                               "`sweep`" + ("" if method is None else ", --method one of its methods/*.json"))
    return read_readout(path, method)
