"""The story layout: `stories/<concept>.txt`, `paired/<scenario>/<concept>.txt`, `.../baseline.txt`.

Each file holds several stories separated by blank lines, one document per paragraph. Paired scenarios tell
the same setting once neutrally (baseline) and once per concept, so a concept direction can be taken against
a baseline that differs only in the emotion, not in the topic.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from .base import CorpusLoader, CorpusWarning, Document, list_files, read_text, warn_empty

__all__ = ["StoryLoader", "split_paragraphs"]

_BLANK_LINES = re.compile(r"\n\s*\n")


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs split at runs of blank lines, stripped (an all-blank text gives one empty paragraph)."""
    return [p.strip() for p in _BLANK_LINES.split(text.strip())]


def _labels(rel: tuple[str, ...]) -> dict[str, Any]:
    concept = rel[-1].removesuffix(".txt")
    if rel[0] == "stories":
        return {"concept": concept, "role": "positive"}
    if concept == "baseline":
        return {"scenario": rel[1], "role": "baseline"}
    return {"concept": concept, "scenario": rel[1], "role": "positive"}


class StoryLoader(CorpusLoader):
    name = "story"

    def matches(self, path: Path) -> bool:
        return path.is_dir() and ((path / "stories").is_dir() or (path / "paired").is_dir())

    def load(self, path: Path) -> list[Document]:
        files = list_files(path, "stories/*.txt") + list_files(path, "paired/*/*.txt")
        for stray in sorted(set(list_files(path, "**/*.txt")) - set(files)):
            where = stray.relative_to(path).as_posix()
            msg = f"{where}: not in stories/ or paired/<scenario>/, ignored; move it there"
            warnings.warn(msg, CorpusWarning, stacklevel=2)
        docs: list[Document] = []
        for file in sorted(files, key=lambda p: p.relative_to(path).as_posix()):
            rel = file.relative_to(path)
            source = rel.as_posix()
            text = read_text(file, source)
            if text is None:
                continue
            labels = _labels(rel.parts)
            for index, paragraph in enumerate(split_paragraphs(text)):
                if not paragraph:
                    warn_empty(source, index)
                    continue
                docs.append(Document(paragraph, {**labels, "source": source, "index": index}))
        return docs
