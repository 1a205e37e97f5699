"""The one exception type of the solvers: bad input, with the fix in the message."""

from __future__ import annotations

from actcache.storage.errors import InputError


class SolverInputError(InputError):
    """Input the solvers cannot use (missing labels, a document too short for the pooling, ...)."""
