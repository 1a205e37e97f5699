"""A JSONL file: one object per line, `text` plus label fields (sentiment, split, ...) kept as metadata."""

from __future__ import annotations

import json
from pathlib import Path

from .base import CorpusError, CorpusLoader, Document, read_text, warn_empty

__all__ = ["JsonlLoader"]

_RESERVED = ("source", "index")


class JsonlLoader(CorpusLoader):
    """text kept verbatim; meta = every other field, plus `source` (file name), `index` (1-based line)."""

    name = "jsonl"

    def matches(self, path: Path) -> bool:
        return path.is_file() and path.suffix == ".jsonl"

    def load(self, path: Path) -> list[Document]:
        source = path.name
        text = read_text(path, source)
        if text is None:
            return []
        docs: list[Document] = []
        for line_no, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                msg = f"{where}: not valid JSON ({err.msg}); write one JSON object per line"
                raise CorpusError(msg) from None
            if not isinstance(row, dict):
                kind = type(row).__name__
                raise CorpusError(f'{where}: expected a JSON object, got {kind}; write {{"text": ...}}')
            if not isinstance(row.get("text"), str):
                raise CorpusError(f'{where}: no string field "text"; every line needs {{"text": "...", ...}}')
            clash = [k for k in _RESERVED if k in row]
            if clash:
                raise CorpusError(f"{where}: field(s) {clash} are set by the loader; rename them")
            body = row.pop("text")
            if not body.strip():
                warn_empty(source, line_no)
                continue
            docs.append(Document(body, {**row, "source": source, "index": line_no}))
        return docs
