"""Corpora: text files on disk -> `Document`s with labels, whatever the layout.

`load_corpus` picks the first loader whose layout matches (story layout before plain text: a story corpus
is also a folder of `.txt` files). `DEMO_CORPUS` is the bundled emotion corpus used by the README demo; the corpus
name `demo` (`--corpus demo`) names it from any folder.
"""

from __future__ import annotations

from pathlib import Path

from .base import CorpusError, CorpusLoader, CorpusWarning, Document
from .jsonl import JsonlLoader
from .story import StoryLoader, split_paragraphs
from .text_folder import TextFolderLoader

__all__ = [
    "DEMO_CORPUS",
    "DEMO_NAME",
    "LOADERS",
    "CorpusError",
    "CorpusLoader",
    "CorpusWarning",
    "Document",
    "JsonlLoader",
    "StoryLoader",
    "TextFolderLoader",
    "load_corpus",
    "split_paragraphs",
]

DEMO_CORPUS = Path(__file__).resolve().parent.parent / "demo_corpus"
DEMO_NAME = "demo"  # `--corpus demo`, unless a file or folder of that name is in the current folder

LOADERS: tuple[CorpusLoader, ...] = (StoryLoader(), JsonlLoader(), TextFolderLoader())


def load_corpus(path: str | Path) -> list[Document]:
    """Read every document under `path` in a deterministic order; fails loudly rather than return nothing."""
    path = Path(path)
    if str(path) == DEMO_NAME and not path.exists():
        path = DEMO_CORPUS
    if not path.exists():
        raise CorpusError(f"corpus path {path} does not exist; pass an existing folder or .jsonl/.txt file "
                          f"(or {DEMO_NAME} for the bundled demo corpus)")
    loader = next((loader for loader in LOADERS if loader.matches(path)), None)
    if loader is None:
        raise CorpusError(
            f"{path}: no corpus layout recognised; use stories/ + paired/<scenario>/ folders, .txt files, "
            "or a .jsonl file"
        )
    docs = loader.load(path)
    if not docs:
        raise CorpusError(f"{path}: the {loader.name} corpus has no non-empty documents; add text to it")
    return docs
