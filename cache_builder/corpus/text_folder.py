"""Plain `.txt` files (a folder, searched recursively, or a single file): each file is one document."""

from __future__ import annotations

from pathlib import Path

from .base import CorpusLoader, Document, list_files, read_text, warn_empty

__all__ = ["TextFolderLoader"]


class TextFolderLoader(CorpusLoader):
    """meta = `source`, the file's path relative to the folder (POSIX): plain text carries no labels."""

    name = "text"

    def matches(self, path: Path) -> bool:
        if path.is_file():
            return path.suffix == ".txt"
        return path.is_dir() and bool(list_files(path, "**/*.txt"))

    def load(self, path: Path) -> list[Document]:
        root, files = (path.parent, [path]) if path.is_file() else (path, list_files(path, "**/*.txt"))
        docs: list[Document] = []
        for file in files:
            source = file.relative_to(root).as_posix()
            text = read_text(file, source)
            if text is None:
                continue
            if not text.strip():
                warn_empty(source)
                continue
            docs.append(Document(text.strip(), {"source": source}))
        return docs
