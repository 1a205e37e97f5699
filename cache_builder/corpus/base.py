"""What every corpus loader shares: the `Document` it yields, its errors and warnings, the interface."""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actcache.storage.errors import InputError

__all__ = [
    "CorpusError",
    "CorpusLoader",
    "CorpusWarning",
    "Document",
    "list_files",
    "read_text",
    "warn_empty",
]


class CorpusError(InputError):
    """A corpus path that cannot be turned into documents."""


class CorpusWarning(UserWarning):
    """A file or document that was skipped; the rest of the corpus still loads."""


@dataclass(frozen=True)
class Document:
    """One text to run through the model, with JSON-able labels (concept, role, split...) beside it."""

    text: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Document:
        if not isinstance(data.get("text"), str) or not isinstance(data.get("meta", {}), dict):
            raise CorpusError(f"not a document: {data!r}; expected {{'text': str, 'meta': dict}}")
        return cls(text=data["text"], meta=dict(data.get("meta", {})))


class CorpusLoader(ABC):
    """One on-disk layout: `matches` recognises it, `load` reads it in a deterministic order."""

    name: str

    @abstractmethod
    def matches(self, path: Path) -> bool:
        """Whether `path` is in this loader's layout (cheap: looks at names, not contents)."""

    @abstractmethod
    def load(self, path: Path) -> list[Document]:
        """All non-empty documents under `path`; skipped files and documents are `CorpusWarning`s."""


def list_files(root: Path, pattern: str) -> list[Path]:
    """Files under `root` matching `pattern`, sorted; hidden ones (`.git`, `.ipynb_checkpoints`) left out."""
    found = (p for p in root.glob(pattern) if p.is_file())
    return sorted(p for p in found if not any(part.startswith(".") for part in p.relative_to(root).parts))


def read_text(path: Path, source: str) -> str | None:
    """The file's text, or None (with a warning) if it is not UTF-8: one bad file must not sink a corpus."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        warnings.warn(
            f"{source}: not valid UTF-8 (byte {err.start}), skipped; re-encode the file as UTF-8",
            CorpusWarning,
            stacklevel=3,
        )
        return None


def warn_empty(source: str, index: int | None = None) -> None:
    """Report a document that strips to nothing (it would add no tokens, only a confusing label)."""
    where = source if index is None else f"{source} (index {index})"
    warnings.warn(f"{where}: empty document, skipped; remove it or add text", CorpusWarning, stacklevel=3)
