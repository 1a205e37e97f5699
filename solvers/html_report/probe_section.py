"""The probe's section: metrics per layer and, for classify probes, reliability diagrams from metrics.json's
bins (`actcache probe`'s output)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from actcache.solvers.errors import SolverInputError
from actcache.solvers.html_report.figures import new_figure, svg_of
from actcache.solvers.html_report.markup import Section, table

__all__ = ["probe_section"]


def _load(probe_dir: Path) -> dict[str, dict[str, Any]]:
    path = probe_dir / "metrics.json"
    if not path.is_file():
        raise SolverInputError(f"{path} does not exist: pass the --out folder of `actcache probe` as --probe")
    return json.loads(path.read_text())


def _reliability(metrics: dict[str, dict[str, Any]]) -> str:
    layers = [k for k, m in metrics.items() if m.get("reliability")]
    fig, axes = new_figure(2.8, 2.8, len(layers))
    for ax, k in zip(axes, layers, strict=True):
        bins = [b for b in metrics[k]["reliability"] if b[4]]  # [lo, hi, mean_pred, frac_pos, count], non-empty
        lo, hi, pred, frac, count = (list(column) for column in zip(*bins, strict=True))
        widths = [b - a for a, b in zip(lo, hi, strict=True)]
        ax.bar(lo, frac, width=widths, align="edge", color="#4c72b0", alpha=0.6, edgecolor="white", label="positives")
        ax.scatter(pred, frac, s=[8 + 40 * c / max(count) for c in count], color="#c44e52", zorder=3,
                   label="bin mean")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.set(xlim=(0, 1), ylim=(0, 1.02))
        ax.set_title(f"layer {k}: ECE {metrics[k]['ece']:.3f}", fontsize=9)
        ax.set_xlabel("predicted P(positive)", fontsize=8)
        ax.set_ylabel("fraction positive", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=6, loc="upper left")
    return svg_of(fig, "Reliability diagrams on the test split: bars are each non-empty bin's fraction of "
                       "positives, dots sit at the bin's mean prediction (size: count); dashed: perfect calibration.")


def probe_section(probe_dir: Path) -> Section:
    """Metrics table for every layer; reliability diagrams when the probe classified."""
    metrics = _load(probe_dir)
    layers = sorted(metrics, key=int)
    names = [k for k in next(iter(metrics.values())) if k != "reliability"]
    blocks = [table(["layer", *names], [[k, *(metrics[k].get(n) for n in names)] for k in layers])]
    if any(metrics[k].get("reliability") for k in layers):
        blocks.append(_reliability({k: metrics[k] for k in layers}))
    return Section("Probes (test split)", blocks)
