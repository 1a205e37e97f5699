"""`actcache compare EXACT LOSSY`: the quality gate of a lossy cache (`build --store-as`), measured by the solvers.

Both caches are solved by the one solve path (`solve_cache`: caa, subspace and ridge, same labels, pooling and
layers); per concept and layer the gate reports the cosine of the two CAA vectors, the held-out AUROC delta (lossy
minus exact; needs a test split), the angle between the two subspace vectors (degrees) and the ridge R^2 delta. The
vectors are those of the written readouts (float16 unit rows: rounding moves a cosine by ~1e-7, far below any gate).
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actcache.solvers.defaults import GATE_MAX_AUROC_DELTA, GATE_MIN_CAA_COSINE
from actcache.solvers.errors import SolverInputError
from actcache.solvers.job import SolveResult, SolveSettings, solve_cache
from actcache.solvers.readout import read_readout
from actcache.solvers.run_setup import RunSettings

__all__ = ["GateSettings", "GateResult", "compare_caches"]

GATE_METHODS = ("caa", "subspace", "ridge")


@dataclass(frozen=True, kw_only=True)
class GateSettings(RunSettings):
    """The solve options both caches are solved with, and the gate's thresholds."""

    pooling: str = "last"
    min_caa_cosine: float = GATE_MIN_CAA_COSINE
    max_auroc_delta: float = GATE_MAX_AUROC_DELTA


@dataclass(frozen=True)
class GateResult:
    """Per concept and layer: `caa_cosine`, `auroc_exact`, `auroc_lossy`, `auroc_delta`, `subspace_angle_deg`,
    `ridge_r2_delta` (None where undefined), plus the worst of each and whether the gate passed."""

    exact: str
    lossy: str
    store_as: str
    rows: list[dict[str, Any]]
    worst: dict[str, float | None]
    passed: bool
    thresholds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"exact": self.exact, "lossy": self.lossy, "store_as": self.store_as, "passed": self.passed,
                "thresholds": self.thresholds, "worst": self.worst, "rows": self.rows}

    def table(self) -> str:
        """A short Markdown table (one row per concept and layer) and the verdict."""
        def cell(value: float | None, spec: str) -> str:
            return "-" if value is None else format(value, spec)

        lines = ["| concept | layer | CAA cosine | AUROC exact -> lossy (delta) | subspace angle | ridge R^2 delta |",
                 "|---|---|---|---|---|---|"]
        for r in self.rows:
            auroc = ("-" if r["auroc_delta"] is None else
                     f"{r['auroc_exact']:.4f} -> {r['auroc_lossy']:.4f} ({r['auroc_delta']:+.4f})")
            lines.append(f"| {r['concept']} | {r['layer']} | {cell(r['caa_cosine'], '.6f')} | {auroc} | "
                         f"{cell(r['subspace_angle_deg'], '.3f')} deg | {cell(r['ridge_r2_delta'], '+.4f')} |")
        w = self.worst
        lines.append(f"\n{self.store_as} gate {'PASSED' if self.passed else 'FAILED'}: min CAA cosine "
                     f"{cell(w['caa_cosine_min'], '.6f')} (>= {self.thresholds['min_caa_cosine']}), max |AUROC "
                     f"delta| {cell(w['auroc_delta_max_abs'], '.4f')} (<= {self.thresholds['max_auroc_delta']}), max "
                     f"subspace angle {cell(w['subspace_angle_deg_max'], '.3f')} deg, max |ridge R^2 delta| "
                     f"{cell(w['ridge_r2_delta_max_abs'], '.4f')}")
        return "\n".join(lines)


def compare_caches(exact_path: str | os.PathLike[str], lossy_path: str | os.PathLike[str],
                   settings: GateSettings | None = None) -> GateResult:
    """Solve both caches the same way and compare what the solvers give (see the module docstring)."""
    from actcache.storage import open_cache

    settings = settings or GateSettings()
    exact, lossy = open_cache(exact_path), open_cache(lossy_path)
    _check_comparable(exact, lossy)
    solve = SolveSettings(methods=GATE_METHODS, pooling=settings.pooling, layers=settings.layers,
                          labels=settings.labels, max_memory=settings.max_memory, device=settings.device,
                          workers=settings.workers, threads=settings.threads, eigen_k=settings.eigen_k)
    with tempfile.TemporaryDirectory(prefix="actcache-compare-") as scratch:
        solved = [(solve_cache(path, Path(scratch) / name, solve), Path(scratch) / name)
                  for name, path in (("exact", exact_path), ("lossy", lossy_path))]
        rows = _rows(solved[0], solved[1])
    worst = {
        "caa_cosine_min": _extreme(min, [r["caa_cosine"] for r in rows]),
        "auroc_delta_max_abs": _extreme(max, [_abs(r["auroc_delta"]) for r in rows]),
        "subspace_angle_deg_max": _extreme(max, [r["subspace_angle_deg"] for r in rows]),
        "ridge_r2_delta_max_abs": _extreme(max, [_abs(r["ridge_r2_delta"]) for r in rows]),
    }
    passed = (worst["caa_cosine_min"] is not None and worst["caa_cosine_min"] >= settings.min_caa_cosine
              and (worst["auroc_delta_max_abs"] is None or worst["auroc_delta_max_abs"] <= settings.max_auroc_delta))
    thresholds = {"min_caa_cosine": settings.min_caa_cosine, "max_auroc_delta": settings.max_auroc_delta}
    return GateResult(str(exact_path), str(lossy_path), lossy.store_as, rows, worst, passed, thresholds)


def _check_comparable(exact: Any, lossy: Any) -> None:
    """Same model, same documents; the first cache exact (one line naming the fix otherwise)."""
    if exact.store_as != "exact":
        raise SolverInputError(f"{exact.path} is stored as {exact.store_as}: pass the exact cache first, then the "
                               "lossy one")
    if exact.fingerprint.model_digest != lossy.fingerprint.model_digest:
        raise SolverInputError(f"{exact.path} and {lossy.path} were built from different models: compare caches of "
                               "one model and corpus")
    keys_exact, keys_lossy = {d.key for d in exact.documents()}, {d.key for d in lossy.documents()}
    if keys_exact != keys_lossy:
        raise SolverInputError(f"{exact.path} and {lossy.path} hold different documents ({len(keys_exact - keys_lossy)}"
                               f" only in the first, {len(keys_lossy - keys_exact)} only in the second): build both "
                               "from the same corpus")


def _rows(exact: tuple[SolveResult, Path], lossy: tuple[SolveResult, Path]) -> list[dict[str, Any]]:
    (result_e, dir_e), (result_l, dir_l) = exact, lossy
    vectors = {m: (read_readout(dir_e, m), read_readout(dir_l, m)) for m in ("caa", "subspace")}
    ridge_e, ridge_l = _ridge(result_e.quality), _ridge(result_l.quality)
    rows = []
    for layer in result_e.layers:
        auroc_e = result_e.evaluation.get("caa", {}).get(layer, {}).get("auroc")
        auroc_l = result_l.evaluation.get("caa", {}).get(layer, {}).get("auroc")
        for c, concept in enumerate(result_e.concepts):
            caa = _cosine(vectors["caa"][0].vectors[layer][c], vectors["caa"][1].vectors[layer][c])
            sub = _cosine(vectors["subspace"][0].vectors[layer][c], vectors["subspace"][1].vectors[layer][c])
            a_e = auroc_e[c] if auroc_e else None
            a_l = auroc_l[c] if auroc_l else None
            r_e, r_l = ridge_e.get((concept, layer)), ridge_l.get((concept, layer))
            rows.append({
                "concept": concept, "layer": layer, "caa_cosine": caa,
                "auroc_exact": a_e, "auroc_lossy": a_l,
                "auroc_delta": None if a_e is None or a_l is None else a_l - a_e,
                "subspace_angle_deg": math.degrees(math.acos(min(1.0, abs(sub)))),
                "ridge_r2_delta": None if r_e is None or r_l is None else r_l - r_e,
            })
    return rows


def _ridge(quality: dict[str, Any]) -> dict[tuple[str, int], float | None]:
    return {(concept, int(layer)): fields.get("ridge_r2")
            for concept, q in quality.items() for layer, fields in q.get("layers", {}).items()}


def _cosine(a: Any, b: Any) -> float:
    a, b = a.double(), b.double()
    return float(a @ b / (a.norm() * b.norm()))


def _abs(value: float | None) -> float | None:
    return None if value is None else abs(value)


def _extreme(pick: Any, values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return pick(kept) if kept else None
