"""Matplotlib figures as inline SVG text: the page needs no file beside it and fetches nothing when viewed.

matplotlib is imported inside the functions (`actcache --help` stays fast); figures are built without pyplot, so
no display or global state is involved. Glyphs are written as SVG paths: the page renders the same without any
font installed.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

__all__ = ["PLOT_CLASS", "heatmap", "new_figure", "svg_of"]

PLOT_CLASS = "plot"  # every figure of the page is one <figure class="plot"> holding one <svg>
_NO_METADATA = {"Creator": None, "Date": None, "Format": None, "Type": None}  # no external RDF links


def new_figure(width: float, height: float, panels: int = 1, ncols: int = 4) -> tuple[Any, list[Any]]:
    """(figure, axes): `panels` plots in rows of at most `ncols`, each `width` x `height` inches; the unused
    cells of the last row are hidden."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no backend or display needed

    cols = max(1, min(panels, ncols))
    rows = -(-panels // cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:panels]


def svg_of(fig: Any, caption: str) -> str:
    """The figure as an inline <figure><svg>...</svg><figcaption> block (the XML prologue stripped)."""
    from html import escape

    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata=_NO_METADATA)
    text = buf.getvalue()
    svg = text[text.index("<svg"):]
    return f'<figure class="{PLOT_CLASS}">{svg}<figcaption>{escape(caption)}</figcaption></figure>'


def heatmap(ax: Any, values: Any, rows: Sequence[str], cols: Sequence[str], *, vmin: float | None = None,
            vmax: float | None = None, cmap: str = "viridis", annotate: bool = True) -> Any:
    """A labelled matrix on `ax` (NaN cells left blank), each cell's value written in it when `annotate`."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols], rotation=45 if len(cols) > 8 else 0)
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    if annotate and data.size <= 400:
        for (i, j), v in np.ndenumerate(data):
            if np.isfinite(v):
                red, green, blue, _ = image.cmap(image.norm(v))
                dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # the cell's luminance picks the ink
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if dark else "black")
    return image
