"""The one error the planner raises, shared by its modules."""

from __future__ import annotations


class PlanError(ValueError):
    """A plan that cannot run (does not fit, bad layout, unknown hook): the message names the fix."""
