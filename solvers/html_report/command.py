"""`actcache report`: the HTML page of solve, probe and geometry outputs (registered by solvers/cli.py)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register_report", "run_report"]


def register_report(subparsers: Any) -> None:
    """Add `report` to the top-level command's subparsers."""
    report = subparsers.add_parser("report", help="one self-contained HTML page (plots inline) of solve, probe and "
                                                  "geometry outputs")
    report.add_argument("--solve", help="output folder of `actcache solve` (quality.json, readout files)")
    report.add_argument("--probe", help="output folder of `actcache probe` (metrics.json)")
    report.add_argument("--geometry", help="output folder of `actcache geometry` (geometry.json)")
    report.add_argument("--out", required=True, help="HTML file to write, e.g. report.html")
    report.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    report.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    from actcache.solvers.html_report.page import write_report

    path, plots = write_report(args.out, args.solve, args.probe, args.geometry, overwrite=args.overwrite)
    print(f"report -> {path} ({plots} plots)")
    return 0
