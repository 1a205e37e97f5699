"""Human-readable triage report (markdown) of a quality.json mapping."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping


def _fmt(x: object) -> str:
    return f"{x:.3f}" if isinstance(x, float) else ("-" if x is None else str(x))


def triage_report(quality: Mapping[str, Mapping[str, object]], *, title: str = "Concept readout triage") -> str:
    """One table row per concept at its middle layer, then the count of each triage label."""
    lines = [
        f"# {title}",
        "",
        "| concept | triage | n | first PC | best neuron cos | ridge R2 | nearest | head conc. |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, q in quality.items():
        mid = q["layers"][str(q["middle_layer"])]  # type: ignore[index]
        nearest = q["nearest_concepts"]
        near = f"{nearest[0][0]} ({nearest[0][1]:.2f})" if nearest else "-"  # type: ignore[index]
        cells = [name, q["triage"], q["n_positive_stories"]]
        cells += [_fmt(mid.get(k)) for k in ("first_pc_variance_ratio", "best_neuron_cosine", "ridge_r2")]
        cells += [near, _fmt(mid.get("head_concentration"))]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    counts = Counter(str(q["triage"]) for q in quality.values())
    lines += ["", "Triage counts: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())), ""]
    return "\n".join(lines)
