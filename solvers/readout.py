"""Readout files: unit concept vectors per layer as float16 safetensors plus a JSON manifest.

Layout of an output directory:
    readout.safetensors   `layer_<idx>.vectors` (n_concepts, hidden) float16, unit rows (primary method)
    readout.json          {"concepts", "layers", "hidden_size", "dtype": "float16", "method", "methods"}
    methods/<name>.safetensors + methods/<name>.json   the same for every method (primary included)
    quality.json          per concept (solvers.quality.concept_quality)
    report.md             human-readable triage
The directory is written under a temporary name and renamed at the end, so it is complete or absent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from actcache.solvers.caa import normalize
from actcache.solvers.errors import SolverInputError
from torch import Tensor

DTYPE = "float16"


@dataclass(frozen=True)
class Readout:
    """Concept vectors of one method: `vectors[layer]` is (len(concepts), hidden_size)."""

    concepts: tuple[str, ...]
    layers: tuple[int, ...]
    hidden_size: int
    vectors: Mapping[int, Tensor]

    def to_dict(self) -> dict[str, object]:
        return {
            "concepts": list(self.concepts),
            "layers": list(self.layers),
            "hidden_size": self.hidden_size,
            "dtype": DTYPE,
        }

    def tensors(self, method: str) -> dict[str, Tensor]:
        """float16 unit rows per layer; a zero or non-finite row (no direction found, or NaN input) is an error
        naming it, so no readout file ever holds NaN or inf."""
        out = {}
        for layer in self.layers:
            v = self.vectors[layer].float()  # (C, d)
            if v.shape != (len(self.concepts), self.hidden_size):
                raise SolverInputError(
                    f"{method} layer {layer}: vectors of shape {tuple(v.shape)}, expected "
                    f"({len(self.concepts)}, {self.hidden_size}): pass one row per concept"
                )
            non_finite = [self.concepts[i] for i in torch.nonzero(~torch.isfinite(v).all(dim=1)).flatten().tolist()]
            if non_finite:
                raise SolverInputError(f"{method} layer {layer}: non-finite values in the vector of {non_finite}: "
                                       f"its input was not finite; run `actcache verify` on the cache")
            norms = v.norm(dim=1)
            bad = [self.concepts[i] for i in torch.nonzero(norms < 1e-6).flatten().tolist()]
            if bad:
                raise SolverInputError(f"{method} layer {layer}: zero vector for {bad}: drop these concepts")
            out[f"layer_{layer}.vectors"] = normalize(v).to(torch.float16).contiguous()
        return out


def _write_one(directory: Path, stem: str, readout: Readout, method: str, extra: Mapping[str, object]) -> None:
    from safetensors.torch import save_file

    save_file(readout.tensors(method), str(directory / f"{stem}.safetensors"), metadata={"method": method})
    manifest = {**readout.to_dict(), "method": method, **extra}
    (directory / f"{stem}.json").write_text(json.dumps(manifest, indent=2) + "\n")


def write_readout(
    out_dir: str | os.PathLike[str],
    methods: Mapping[str, Readout],
    *,
    primary: str,
    quality: Mapping[str, object] | None = None,
    report: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write every method's readout (`primary` also as readout.safetensors), quality.json and report.md.

    An existing `out_dir` is refused unless `overwrite` (the caller has checked it is an earlier output)."""
    from actcache.storage.atomic_dir import atomic_dir

    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise SolverInputError(f"output directory {out} exists: pass --overwrite to replace it, or choose a new path")
    if primary not in methods:
        raise SolverInputError(f"primary method {primary!r} not among {sorted(methods)}: pick one of them")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "methods").mkdir()
        _write_one(tmp, "readout", methods[primary], primary, {"methods": sorted(methods)})
        for name, readout in methods.items():  # every method in its own file, the primary too
            _write_one(tmp / "methods", name, readout, name, {})
        if quality is not None:
            (tmp / "quality.json").write_text(json.dumps(quality, indent=2) + "\n")
        if report is not None:
            (tmp / "report.md").write_text(report)
    return out


def read_readout(path: str | os.PathLike[str], method: str | None = None) -> Readout:
    """Load the primary readout of an output directory (or `method`'s), vectors as float32."""
    from safetensors.torch import load_file

    base = Path(path) if method is None else Path(path) / "methods"
    stem = "readout" if method is None else method
    manifest = json.loads((base / f"{stem}.json").read_text())
    tensors = load_file(str(base / f"{stem}.safetensors"))
    layers = tuple(manifest["layers"])
    return Readout(
        tuple(manifest["concepts"]),
        layers,
        manifest["hidden_size"],
        {layer: tensors[f"layer_{layer}.vectors"].float() for layer in layers},
    )
