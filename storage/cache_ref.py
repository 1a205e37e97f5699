"""A cache as a command names it: its location and, optionally, the tag to read it at."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CacheRef"]


@dataclass(frozen=True)
class CacheRef:
    """`location` (a folder or s3://bucket/prefix) read at tag `tag`.

    Commands pass it where a location goes (it is os.PathLike), so `--tag` reaches `open_cache` through every
    layer of a solver without each layer's settings growing a field.
    """

    location: str
    tag: str | None = None

    def __fspath__(self) -> str:
        return self.location

    def __str__(self) -> str:
        return self.location if self.tag is None else f"{self.location} (tag {self.tag})"
