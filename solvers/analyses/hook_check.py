"""The one check every analysis makes of its `--hook`: captured, and real-valued (router expert ids are not)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actcache.solvers.errors import SolverInputError
from actcache.storage.hook_points import is_integer_hook

if TYPE_CHECKING:
    from actcache.storage.reader import CacheReader


def require_activation_hook(reader: CacheReader, hook: str) -> None:
    """Refuse a hook the cache lacks, or one whose values are ids (geometry or a probe of ids means nothing)."""
    if hook not in reader.hooks:
        raise SolverInputError(f"the cache has no {hook!r} activations (hooks: {', '.join(reader.hooks)}): "
                               f"pick one with --hook, or rebuild with --hooks {hook}")
    if is_integer_hook(hook):
        usable = [h for h in reader.hooks if not is_integer_hook(h)]
        raise SolverInputError(f"{hook!r} holds expert ids, not activations: pick a real-valued hook with --hook "
                               f"({', '.join(usable)})")
