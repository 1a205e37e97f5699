"""The page's HTML pieces: escaped tables and notes, and the one inline stylesheet (nothing is fetched)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

__all__ = ["STYLE", "Section", "fmt", "note", "table"]

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
figure.plot { margin: 1em 0; } figure.plot svg { max-width: 100%; height: auto; }
figcaption { font-size: .85em; color: #555; }
p.note { color: #555; font-size: .9em; }
pre { white-space: pre-wrap; background: #f7f7f7; padding: 1em; font-size: .85em; }
"""


@dataclass
class Section:
    """One <h2> section of the page: its title and its HTML blocks (tables, figures, notes) in order."""

    title: str
    blocks: list[str] = field(default_factory=list)

    def html(self) -> str:
        return f"<section><h2>{escape(self.title)}</h2>\n" + "\n".join(self.blocks) + "\n</section>"


def fmt(value: object, digits: int = 3) -> str:
    """A number to `digits` decimals; None (a measure that does not apply) as n/a; anything else as text."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An HTML table, every cell escaped and numbers formatted by `fmt`."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def note(text: str) -> str:
    """A grey explanatory paragraph (why a plot is absent, what a figure shows)."""
    return f'<p class="note">{escape(text)}</p>'
