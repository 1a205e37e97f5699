"""Package exports imported on first use (PEP 562), so the command line and `import actcache.x` stay light.

A package lists its exports once, as the imports of its `if TYPE_CHECKING:` block (what mypy and readers see), and
calls `lazy_exports(__name__, __file__)` in the `else:` branch: the first `actcache.storage.open_cache` then imports
`actcache.storage.reader`, and nothing before it does.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, init_file: str) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, from the `from .x import a, b` lines under its TYPE_CHECKING."""
    origins = _type_checking_imports(Path(init_file))

    def __getattr__(name: str) -> Any:
        if name not in origins:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attribute = origins[name]
        value = getattr(importlib.import_module(module, package), attribute)
        setattr(sys.modules[package], name, value)  # later reads are plain attribute reads
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(origins))

    return __getattr__, __dir__


def _type_checking_imports(init_file: Path) -> dict[str, tuple[str, str]]:
    """exported name -> (module as written, e.g. `.reader`, name in that module)."""
    origins: dict[str, tuple[str, str]] = {}
    for node in ast.parse(init_file.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for statement in node.body:
                if not isinstance(statement, ast.ImportFrom):
                    raise TypeError(f"{init_file}: only `from .module import name` belongs under TYPE_CHECKING")
                module = "." * statement.level + (statement.module or "")
                for alias in statement.names:
                    origins[alias.asname or alias.name] = (module, alias.name)
    return origins
