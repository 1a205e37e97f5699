"""The solve's sections: held-out AUROC by layer, triage table, eigen-spectra per concept, per-head selectivity
heatmaps and the nearest-concept (cosine) map, from quality.json and the readout files of `actcache solve`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from actcache.solvers.errors import SolverInputError
from actcache.solvers.html_report.figures import heatmap, new_figure, svg_of
from actcache.solvers.html_report.markup import Section, note, table

__all__ = ["load_quality", "solve_sections"]

Quality = Mapping[str, Mapping[str, Any]]


def load_quality(solve_dir: Path) -> Quality:
    """quality.json of a solve output, refused with the fix when the solve did not write one."""
    path = solve_dir / "quality.json"
    if not path.is_file():
        raise SolverInputError(f"{path} does not exist: pass the --out folder of `actcache solve` (run with the "
                               "default --methods, or any list that includes quality)")
    quality = json.loads(path.read_text())
    if not quality or "triage" not in next(iter(quality.values())):
        raise SolverInputError(f"{path} holds no triage: rerun `actcache solve` with `quality` in --methods")
    return quality


def _layers(quality: Quality) -> list[str]:
    return sorted(next(iter(quality.values()))["layers"], key=int)


def _auroc_by_layer(quality: Quality) -> list[str]:
    layers = _layers(quality)
    rows = {name: [q["layers"][k].get("heldout", {}).get("auroc") for k in layers] for name, q in quality.items()}
    if all(v is None for vals in rows.values() for v in vals):
        return [note("Held-out AUROC n/a: the solve had no test split (rerun `actcache solve` with --split-field).")]
    fig, (ax,) = new_figure(7, 3.2)
    for name, values in rows.items():
        ax.plot([int(k) for k in layers], [float("nan") if v is None else v for v in values], marker="o", label=name)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="layer", ylabel="held-out AUROC", ylim=(0.0, 1.05), xticks=[int(k) for k in layers])
    ax.legend(fontsize=7, ncols=2)
    return [svg_of(fig, "Held-out AUROC of each concept's direction by layer (dashed: chance).")]


def _triage_table(quality: Quality) -> str:
    mid = str(next(iter(quality.values()))["middle_layer"])
    rows = []
    for name, q in quality.items():
        row = q["layers"][mid]
        nearest = q.get("nearest_concepts") or []
        rows.append([name, q["triage"], q["n_positive_stories"], row.get("first_pc_variance_ratio"),
                     row.get("best_neuron_cosine"), row.get("ridge_r2"),
                     f"{nearest[0][0]} ({nearest[0][1]:.2f})" if nearest else None, row.get("head_concentration")])
    return table(["concept", f"triage (layer {mid})", "positives", "first PC", "best neuron cos", "ridge R²",
                  "nearest concept (cos)", "head conc."], rows)


def _eigen_spectra(quality: Quality) -> list[str]:
    """Subspace eigenvalues per layer when the subspace method ran, else the positives' top PC variance shares."""
    layers = _layers(quality)
    key, label = "subspace_eigenvalues", "subspace eigenvalue"
    if all(q["layers"][k].get(key) is None for q in quality.values() for k in layers):
        key, label = "top3_variance_ratios", "variance share of PC"
    fig, axes = new_figure(2.8, 2.3, len(quality))
    for ax, (name, q) in zip(axes, quality.items(), strict=True):
        for k in layers:
            values = q["layers"][k].get(key) or []
            ax.plot(range(1, len(values) + 1), values, marker=".", lw=1, label=f"layer {k}")
        ax.set_title(f"{name} ({q['triage']})", fontsize=9)
        ax.set_xlabel("rank", fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=6)
    what = ("eigenvalues of the difference of the positives' and negatives' mean trajectory projectors (subspace)"
            if key == "subspace_eigenvalues" else "variance shares of the top principal components of the positives")
    return [svg_of(fig, f"Eigen-spectrum per concept, one line per layer: {what}; title: triage.")]


def _head_heatmaps(quality: Quality) -> list[str]:
    import numpy as np

    layers = [k for k in _layers(quality) if any(q["layers"][k].get("top_heads") for q in quality.values())]
    if not layers:
        return [note("Per-head heatmaps n/a: the head ranking did not run (add `heads` to --methods; it needs "
                     "attn_z in the cache).")]
    n_heads = 1 + max(h[0] for q in quality.values() for k in layers for h in q["layers"][k].get("top_heads") or [])
    fig, axes = new_figure(max(2.5, 0.35 * n_heads + 1.5), 0.3 * len(quality) + 1.2, len(layers), ncols=2)
    for ax, k in zip(axes, layers, strict=True):
        grid = np.full((len(quality), n_heads), np.nan)
        for i, q in enumerate(quality.values()):
            for head, _raw, selectivity in q["layers"][k].get("top_heads") or []:
                grid[i, head] = selectivity
        image = heatmap(ax, grid, list(quality), [str(h) for h in range(n_heads)], annotate=n_heads <= 16)
        ax.set_title(f"layer {k}", fontsize=9)
        ax.set_xlabel("head", fontsize=8)
        fig.colorbar(image, ax=ax, shrink=0.8)
    return [svg_of(fig, "Per-head selectivity (|mean positive - mean negative| of the head's o_proj input over the "
                        "negatives' spread); blank: outside the ranked top heads.")]


def _nearest_map(solve_dir: Path, quality: Quality) -> list[str]:
    import numpy as np
    from actcache.solvers.readout import read_readout

    readout = read_readout(solve_dir)
    if len(readout.concepts) < 2:
        return [note("Nearest-concept map n/a: a single concept has no others to be near.")]
    mid = int(next(iter(quality.values()))["middle_layer"])
    vectors = readout.vectors[mid].double().numpy()
    cos = vectors @ vectors.T / np.outer(np.linalg.norm(vectors, axis=1), np.linalg.norm(vectors, axis=1))
    side = 0.4 * len(readout.concepts) + 1.6
    fig, (ax,) = new_figure(side + 1, side)
    image = heatmap(ax, cos, readout.concepts, readout.concepts, vmin=-1, vmax=1, cmap="RdBu_r",
                    annotate=len(readout.concepts) <= 20)
    ax.tick_params(axis="x", rotation=90 if len(readout.concepts) > 8 else 0)
    fig.colorbar(image, ax=ax, shrink=0.8)
    method = readout_method(solve_dir)
    return [svg_of(fig, f"Nearest-concept map: cosine between the concepts' `{method}` directions at layer {mid} "
                        "(> 0.8: contaminated).")]


def readout_method(solve_dir: Path) -> str:
    """The method whose vectors fill readout.safetensors (readout.json's `method`)."""
    return str(json.loads((solve_dir / "readout.json").read_text()).get("method", "caa"))


def solve_sections(solve_dir: Path) -> list[Section]:
    """The solve's sections, in the order a reader asks: does it separate, what kind of concept, where."""
    quality = load_quality(solve_dir)
    separation = Section("Does each direction separate its concept?", _auroc_by_layer(quality))
    triage = Section("Triage and eigen-spectra per concept", [_triage_table(quality), *_eigen_spectra(quality)])
    heads = Section("Per-head selectivity", _head_heatmaps(quality))
    nearest = Section("Nearest-concept map", _nearest_map(solve_dir, quality))
    report_md = solve_dir / "report.md"
    sections = [separation, triage, heads, nearest]
    if report_md.is_file():
        from html import escape

        sections.append(Section("report.md (outliers, glossary)",
                                [f"<details><summary>show</summary><pre>{escape(report_md.read_text())}</pre>"
                                 "</details>"]))
    return sections

