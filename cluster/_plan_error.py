"""The one error the planner raises, shared by its modules."""

from __future__ import annotations

from actcache.storage.errors import InputError


class PlanError(InputError):
    """A plan that cannot run (does not fit, bad layout, unknown hook): the message names the fix."""
