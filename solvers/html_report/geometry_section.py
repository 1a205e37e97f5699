"""The geometry section: the linear-CKA matrix between layers, the stage count and, for MLP hooks, sparsity and
temperature per layer (`actcache geometry`'s geometry.json)."""

from __future__ import annotations

import json
from pathlib import Path

from actcache.solvers.errors import SolverInputError
from actcache.solvers.html_report.figures import heatmap, new_figure, svg_of
from actcache.solvers.html_report.markup import Section, note, table

__all__ = ["geometry_section"]


def geometry_section(geometry_dir: Path) -> Section:
    """CKA heatmap with the stage summary underneath; the MLP table when geometry.json has one."""
    path = geometry_dir / "geometry.json"
    if not path.is_file():
        raise SolverInputError(f"{path} does not exist: pass the --out folder of `actcache geometry` as --geometry")
    geometry = json.loads(path.read_text())
    layers, matrix = geometry["cka"]["layers"], geometry["cka"]["matrix"]
    side = 0.4 * len(layers) + 1.6
    fig, (ax,) = new_figure(side + 1, side)
    names = [str(k) for k in layers]
    image = heatmap(ax, matrix, names, names, vmin=0, vmax=1, annotate=len(layers) <= 20)
    ax.set(xlabel="layer", ylabel="layer")
    fig.colorbar(image, ax=ax, shrink=0.8)
    blocks = [svg_of(fig, f"Linear CKA between layers of {geometry['hook']} ({geometry['cka_method']}, "
                          f"{geometry['n_tokens']} tokens)."),
              note(f"{geometry['stages']} stage(s): consecutive layers with CKA below "
                   f"{geometry['stage_threshold']} start a new one; transitions "
                   f"{', '.join(f'{a}→{b}' for a, b in geometry.get('transitions', [])) or 'none'}.")]
    mlp = geometry.get("mlp")
    if mlp:
        rows = [[k, mlp[k]["sparsity"], mlp[k]["temperature"]] for k in sorted(mlp, key=int)]
        blocks.append(table(["layer", "sparsity", "temperature"], rows))
    return Section("Layer geometry", blocks)
