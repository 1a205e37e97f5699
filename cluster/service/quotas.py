"""Per-user quotas: tokens computed per UTC day and jobs queued or running at once (limits from users.yaml).

A job is charged, on the UTC day it was submitted, the tokens computed for it; while it is live it also holds the
tokens it still has to compute, so a user cannot queue past the limit. Reused documents cost nothing.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from typing import Any

from .users import User

__all__ = ["QuotaExceeded", "check_quota", "usage"]

_LIVE = ("queued", "running")


class QuotaExceeded(Exception):
    """HTTP 429: `body` says which limit, and when it resets (also as `Retry-After` seconds)."""

    def __init__(self, message: str, retry_after_s: float, **facts: Any) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, math.ceil(retry_after_s))
        resets = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.retry_after_s)
        self.body = {"detail": message, "retry_after_s": self.retry_after_s,
                     "resets_at": resets.isoformat(timespec="seconds"), **facts}


def _day(timestamp: float) -> dt.date:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).date()


def _seconds_to_midnight(now: float) -> float:
    tomorrow = dt.datetime.combine(_day(now) + dt.timedelta(days=1), dt.time(), dt.UTC)
    return tomorrow.timestamp() - now


def usage(user: User, records: Iterable[dict[str, Any]], now: float) -> dict[str, Any]:
    """What `GET /v1/usage` answers: today's charged tokens, live jobs, and the user's limits."""
    mine = [r for r in records if r["user"] == user.name]
    today = [r for r in mine if _day(r["submitted"]) == _day(now)]
    held = sum(max(0, r["progress"].get("tokens", 0) - r["progress"].get("tokens_done", 0))
               for r in today if r["state"] in _LIVE)
    return {"user": user.name, "day": _day(now).isoformat(),
            "tokens_today": sum(r["charged_tokens"] for r in today), "tokens_held": held,
            "tokens_per_day": user.tokens_per_day,
            "jobs_running": sum(r["state"] in _LIVE for r in mine), "concurrent_jobs": user.concurrent_jobs,
            "resets_in_s": math.ceil(_seconds_to_midnight(now))}


def check_quota(user: User, records: Iterable[dict[str, Any]], new_tokens: int | None, now: float) -> None:
    """Refuse a new job over either limit (QuotaExceeded); `new_tokens` None checks only the job count."""
    records = list(records)
    used = usage(user, records, now)
    if user.concurrent_jobs is not None and used["jobs_running"] >= user.concurrent_jobs:
        etas = [r["progress"].get("eta_s") for r in records if r["user"] == user.name and r["state"] == "running"]
        raise QuotaExceeded(
            f"user {user.name!r} has {used['jobs_running']} jobs queued or running, the limit is "
            f"{user.concurrent_jobs}: wait for one to finish", min((e for e in etas if e), default=5.0),
            limit="concurrent_jobs", jobs_running=used["jobs_running"], concurrent_jobs=user.concurrent_jobs)
    if user.tokens_per_day is None or new_tokens is None:
        return
    spent = used["tokens_today"] + used["tokens_held"]
    if spent + new_tokens > user.tokens_per_day:
        raise QuotaExceeded(
            f"user {user.name!r} has used {spent} of {user.tokens_per_day} tokens today (UTC) and this job needs "
            f"{new_tokens} more: wait for the reset, or send fewer new documents",
            _seconds_to_midnight(now), limit="tokens_per_day", tokens_today=spent, tokens_needed=new_tokens,
            tokens_per_day=user.tokens_per_day)
