"""`actcache report`: one self-contained HTML page (plots as inline SVG) from solve, probe and geometry outputs."""

from actcache.solvers.html_report.command import register_report
from actcache.solvers.html_report.page import render_report, write_report

__all__ = ["register_report", "render_report", "write_report"]
