"""report.md: what a researcher asks first (does the direction separate, at which layer), then the triage of
each concept's positives, outliers quoted as text, and a glossary. Built from quality.json alone (plus the texts
of the outlier documents), so it says nothing that the files beside it do not hold.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from statistics import mean
from typing import Any

from actcache.solvers.heads import DEFAULT_TOP_HEADS
from actcache.solvers.quality import TRIAGE_ORDER

__all__ = ["triage_report", "outlier_texts"]

NA = "n/a"
QUOTE_CHARS = 160

GLOSSARY = """\
## Glossary

- **AUROC** (held-out): the chance that a held-out positive of the concept projects higher on the concept's
  direction than a held-out document that is not one (1.0 perfect, 0.5 chance). Ties count one half.
- **balanced accuracy** (held-out): the mean of the true-positive and true-negative rates of the threshold
  halfway between the projected train means of positives and negatives.
- **separation (SD)** (held-out): (mean projection of positives - mean projection of the others) divided by
  sqrt((variance of positives + variance of the others) / 2): how many standard deviations apart the two groups
  lie along the direction.
- **best layer**: the layer with the highest mean held-out AUROC over the concepts (ties: higher separation).
- **first PC**: the share of the variance of the concept's pooled train positives (centred) that their first
  principal component carries: > 0.7 the positives vary mostly along one direction, < 0.4 in many. It
  describes how alike the positives are, not how well the direction separates them from other documents.
- **best neuron cos**: the largest |cosine| (signed value shown) between the direction and a column of the
  layer's MLP down-projection W_down (one column per neuron); n/a on MoE layers or without the weights.
- **ridge R²**: how much of the direction a ridge regression (lambda 0.01) on the other concepts' directions
  rebuilds, 1 - |t - reconstruction|² / |t|²; > 0.9 redundant; n/a with a single concept.
- **nearest concept**: the other concept whose direction has the highest cosine with this one; > 0.8
  contaminated.
- **head conc.**: the share of the per-head difference of means (norm of mean positive - mean negative o_proj
  input, per head) that the 10 most selective heads carry; > 0.5 a sparse head circuit, near 10/n_heads spread
  evenly; n/a when the model has 10 heads or fewer (the top 10 would be every head, always 1.0).
- **triage** (at the middle solved layer, checked in this order): redundant (ridge R² > 0.9), contaminated
  (nearest cosine > 0.8), clean single-neuron (first PC > 0.7 and |best neuron cos| > 0.6), clean low-dim
  circuit (first PC > 0.7), fragmented (first PC < 0.4), otherwise mixed.
- **alignment** (outliers): the cosine between a positive (minus the mean of the concept's positives) and the
  direction; the two lowest are the concept's outliers.
- **n/a**: the measure does not apply (the note under its table says why).
"""


def _num(x: object, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else NA


def _layers(quality: Mapping[str, Mapping[str, Any]]) -> list[str]:
    first = next(iter(quality.values()))
    return sorted(first["layers"], key=int)


def _heldout(q: Mapping[str, Any], layer: str, key: str) -> float | None:
    value = q["layers"][layer].get("heldout", {}).get(key)
    return float(value) if isinstance(value, (int, float)) else None


def _mean_of(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return mean(known) if known else None


def _best(scores: Mapping[str, tuple[float | None, float | None]]) -> str | None:
    """The layer with the highest AUROC, ties broken by separation; None when nothing was scored."""
    scored = {layer: s for layer, s in scores.items() if s[0] is not None}
    if not scored:
        return None
    return max(scored, key=lambda layer: (scored[layer][0], scored[layer][1] or float("-inf")))


def _separation_section(quality: Mapping[str, Mapping[str, Any]], method: str, pooling: str) -> list[str]:
    layers = _layers(quality)
    lines = ["## Does each direction separate its concept?", ""]
    has_split = any(_heldout(q, layer, "auroc") is not None for q in quality.values() for layer in layers)
    if not has_split:
        return lines + [
            "No held-out split, so nothing was scored on documents the directions were not fitted on: AUROC, "
            "accuracy, separation and the best layer are n/a. Give the documents a split label (e.g. a JSONL field "
            "`split` with values `train`/`test`) and rerun with `--split-field split`.",
            "",
        ]
    per_layer = {}
    lines += [f"Held-out (test) documents projected on each concept's `{method}` direction (`{pooling}` pooling), "
              "fitted on the train split only; means over the concepts.", "",
              "| layer | AUROC | balanced accuracy | separation (SD) | concepts scored |", "|---|---|---|---|---|"]
    for layer in layers:
        auroc = _mean_of([_heldout(q, layer, "auroc") for q in quality.values()])
        acc = _mean_of([_heldout(q, layer, "balanced_accuracy") for q in quality.values()])
        sep = _mean_of([_heldout(q, layer, "separation") for q in quality.values()])
        scored = sum(_heldout(q, layer, "auroc") is not None for q in quality.values())
        per_layer[layer] = (auroc, sep)
        lines.append(f"| {layer} | {_num(auroc)} | {_num(acc)} | {_num(sep, 2)} | {scored} of {len(quality)} |")
    best = _best(per_layer)
    lines += ["", f"**Best layer: {best}** (highest mean held-out AUROC)." if best else "", ""]
    lines += ["Per concept, at its own best layer:", "",
              "| concept | best layer | AUROC | balanced accuracy | separation (SD) | AUROC by layer |",
              "|---|---|---|---|---|---|"]
    for name, q in quality.items():
        own = _best({layer: (_heldout(q, layer, "auroc"), _heldout(q, layer, "separation")) for layer in layers})
        by_layer = ", ".join(f"{layer}: {_num(_heldout(q, layer, 'auroc'), 2)}" for layer in layers)
        if own is None:
            lines.append(f"| {name} | {NA} | {NA} | {NA} | {NA} | {by_layer} |")
            continue
        cells = [_num(_heldout(q, own, k), d) for k, d in (("auroc", 3), ("balanced_accuracy", 3), ("separation", 2))]
        lines.append(f"| {name} | {own} | {' | '.join(cells)} | {by_layer} |")
    unscored = [n for n, q in quality.items() if all(_heldout(q, layer, "auroc") is None for layer in layers)]
    if unscored:
        lines += ["", f"n/a: the test split holds no positive (or no other document) of {', '.join(unscored)}."]
    return lines + [""]


def _head_note(rows: Sequence[Mapping[str, Any]]) -> str | None:
    tops = [r.get("top_heads") for r in rows]
    if all(t is None for t in tops):
        return "head conc. n/a: per-head ranking was not run (add `heads` to --methods; needs attn_z in the cache)."
    n_heads = max(len(t) for t in tops if t is not None)
    if n_heads <= DEFAULT_TOP_HEADS:
        return (f"head conc. n/a: the model has {n_heads} attention heads, so its top {DEFAULT_TOP_HEADS} would be "
                "all of them (always 1.0).")
    return None


def _triage_section(quality: Mapping[str, Mapping[str, Any]]) -> list[str]:
    mid = str(next(iter(quality.values()))["middle_layer"])
    lines = [
        f"## Triage of each concept's positives at layer {mid}",
        "",
        f"The triage describes the concept's train positives at layer {mid} (the middle of the solved layers): how "
        "alike they are (first PC), whether one MLP neuron or another concept's direction matches the direction, "
        "and whether the other directions rebuild it. It does not measure separation: a concept whose direction "
        "separates perfectly is `fragmented` when its positives differ from each other in many ways.",
        "",
        "| concept | triage | positives | first PC | best neuron cos | ridge R² | nearest concept (cos) | head conc. |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for name, q in quality.items():
        row = q["layers"][mid]
        rows.append(row)
        nearest = q.get("nearest_concepts") or []
        near = f"{nearest[0][0]} ({nearest[0][1]:.2f})" if nearest else NA
        cells = [name, q["triage"], q["n_positive_stories"], _num(row.get("first_pc_variance_ratio")),
                 _num(row.get("best_neuron_cosine")), _num(row.get("ridge_r2")), near,
                 _num(row.get("head_concentration"))]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    counts = Counter(str(q["triage"]) for q in quality.values())
    lines += ["", "Triage counts: " + ", ".join(f"{k}: {counts[k]}" for k in TRIAGE_ORDER if counts[k])]
    notes = []
    reasons = sorted({str(r["neuron_reason"]) for r in rows if r.get("neuron_reason")})
    if reasons:
        notes.append(f"best neuron cos n/a: {'; '.join(reasons)}.")
    if len(quality) == 1:
        notes.append("ridge R² and nearest concept n/a: a single concept has no others to be rebuilt from or near.")
    head = _head_note(rows)
    if head:
        notes.append(head)
    return lines + ([""] + notes if notes else []) + [""]


def _quote(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= QUOTE_CHARS else flat[: QUOTE_CHARS - 3] + "..."


def _outlier_section(quality: Mapping[str, Mapping[str, Any]], texts: Mapping[str, str]) -> list[str]:
    mid = next(iter(quality.values()))["middle_layer"]
    lines = [f"## Outliers at layer {mid}", "",
             "Per concept, the two train positives least aligned with its direction:", ""]
    for name, q in quality.items():
        outliers = q.get("outlier_stories") or []
        if not outliers:
            lines.append(f"- **{name}**: {NA} (fewer than two positives)")
            continue
        quoted = []
        for key, alignment in outliers:
            text = texts.get(key)
            shown = f'"{_quote(text)}"' if text is not None else f"document {key} (text not stored: --no-text)"
            quoted.append(f"{shown} (alignment {alignment:.2f})")
        lines.append(f"- **{name}**: " + "; ".join(quoted))
    return lines + [""]


def triage_report(quality: Mapping[str, Mapping[str, Any]], *, texts: Mapping[str, str] | None = None,
                  method: str = "caa", pooling: str = "last", title: str = "Concept readout") -> str:
    """The markdown report of a solve: separation per layer and the best layer, triage, outliers, glossary.

    `texts` maps document keys to their text (outliers are quoted; a missing key is named instead).
    """
    if not quality:
        return f"# {title}\n\nNo concept was solved.\n"
    layers = ", ".join(_layers(quality))
    lines = [f"# {title}", "",
             f"{len(quality)} concept(s), layer(s) {layers}, `{method}` directions, `{pooling}` pooling.", ""]
    lines += _separation_section(quality, method, pooling)
    lines += _triage_section(quality)
    lines += _outlier_section(quality, texts or {})
    return "\n".join(lines) + "\n" + GLOSSARY


def outlier_texts(reader: Any, quality: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Texts of every outlier document named in `quality`, from the cache (none for segments built --no-text)."""
    keys = list(dict.fromkeys(key for q in quality.values() for key, _ in q.get("outlier_stories") or []))
    return {k: t for k, t in zip(keys, reader.texts(keys, strict=False), strict=True) if t is not None}
