"""The report page: the sections of the given outputs in one HTML file with its style and plots inline, so it
opens offline from anywhere (nothing is fetched when viewed)."""

from __future__ import annotations

import os
from html import escape
from pathlib import Path

from actcache.solvers.errors import SolverInputError
from actcache.solvers.html_report.figures import PLOT_CLASS
from actcache.solvers.html_report.markup import STYLE, Section

__all__ = ["render_report", "write_report"]

PathLike = str | os.PathLike[str]


def _folder(path: PathLike, option: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise SolverInputError(f"{option} {folder}: no such folder; pass the --out folder of that command")
    return folder


def render_report(solve: PathLike | None = None, probe: PathLike | None = None, geometry: PathLike | None = None,
                  *, title: str = "actcache report") -> str:
    """The page's HTML from a solve, probe and/or geometry output folder (at least one)."""
    from actcache.solvers.html_report.geometry_section import geometry_section
    from actcache.solvers.html_report.probe_section import probe_section
    from actcache.solvers.html_report.solve_section import solve_sections

    if solve is None and probe is None and geometry is None:
        raise SolverInputError("nothing to report: pass --solve, --probe and/or --geometry output folders")
    sections: list[Section] = []
    sources = []
    if solve is not None:
        sections += solve_sections(_folder(solve, "--solve"))
        sources.append(f"solve {solve}")
    if probe is not None:
        sections.append(probe_section(_folder(probe, "--probe")))
        sources.append(f"probe {probe}")
    if geometry is not None:
        sections.append(geometry_section(_folder(geometry, "--geometry")))
        sources.append(f"geometry {geometry}")
    body = "\n".join(s.html() for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body><h1>{escape(title)}</h1>"
            f'<p class="note">From {escape("; ".join(sources))}.</p>\n{body}\n</body></html>\n')


def write_report(out: PathLike, solve: PathLike | None = None, probe: PathLike | None = None,
                 geometry: PathLike | None = None, *, overwrite: bool = False) -> tuple[Path, int]:
    """Write the page to `out` (refused when it exists, unless `overwrite`), atomically; (path, plot count)."""
    target = Path(out)
    if target.exists() and not overwrite:
        raise SolverInputError(f"--out {target} exists: pass --overwrite to replace it, or another path")
    page = render_report(solve, probe, geometry)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(page, encoding="utf-8")
    partial.replace(target)
    return target, page.count(f'<figure class="{PLOT_CLASS}">')
