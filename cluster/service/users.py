"""The service's users: `users.yaml` maps each name to its roles, the sha256 of its token (never the token) and
its optional quotas (`tokens_per_day`, `concurrent_jobs`; absent: unlimited). docs/SERVICE.md has the schema."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actcache.storage.errors import InputError

__all__ = ["LIMITS", "ROLES", "User", "UsersError", "add_user", "authenticate", "load_users"]

ROLES = ("submit", "read")
_TOKEN_BYTES = 32  # 256 bits: a plain sha256 of such a token cannot be brute-forced, so no slow hash is needed
# a url-safe token starts with '-' one time in 32, and argparse then takes `--token -x...` for an option
_TOKEN_PREFIX = "act_"


class UsersError(InputError):
    """A users file or `user add` request that cannot work; the message names the fix."""


LIMITS = ("tokens_per_day", "concurrent_jobs")


@dataclass(frozen=True)
class User:
    name: str
    roles: tuple[str, ...]
    token_sha256: str
    tokens_per_day: int | None = None  # tokens computed for the user's jobs per UTC day (reused ones are free)
    concurrent_jobs: int | None = None  # the user's jobs queued or running at once

    def to_entry(self) -> dict[str, Any]:
        """The user's users.yaml entry."""
        limits = {name: getattr(self, name) for name in LIMITS if getattr(self, name) is not None}
        return {"roles": list(self.roles), "token_sha256": self.token_sha256, **limits}


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_users(path: str | Path) -> dict[str, User]:
    """Every user of the file (an absent file has none); refuses a file that is not the expected mapping."""
    import yaml

    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise UsersError(f"{path}: cannot read it ({' '.join(str(error).split())}); fix or remove it") from None
    entries = data.get("users", {}) if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise UsersError(f"{path}: expected `users:` mapping names to roles and token_sha256; fix or remove it")
    users = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("token_sha256"), str):
            raise UsersError(f"{path}: user {name!r} has no token_sha256; remove it and `actcache user add` it again")
        limits = {limit: _limit(path, name, limit, entry.get(limit)) for limit in LIMITS}
        users[str(name)] = User(str(name), tuple(entry.get("roles") or ()), entry["token_sha256"], **limits)
    return users


def _limit(path: Path, name: object, limit: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsersError(f"{path}: user {name!r} has {limit}: {value!r}; give a whole number >= 1, or remove it "
                         f"for no limit")
    return value


def add_user(path: str | Path, name: str, roles: tuple[str, ...], *, tokens_per_day: int | None = None,
             concurrent_jobs: int | None = None) -> str:
    """Add `name` with `roles` and quotas (None: unlimited) to the file (written atomically, mode 0600) and return
    its new token."""
    import yaml

    path = Path(path)
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise UsersError(f"--roles {','.join(roles)}: give one or more of {','.join(ROLES)}")
    users = load_users(path)
    if name in users:
        raise UsersError(f"user {name!r} already exists in {path}; pick another name or remove that entry first")
    for limit, value in (("tokens_per_day", tokens_per_day), ("concurrent_jobs", concurrent_jobs)):
        _limit(path, name, limit, value)
    token = _TOKEN_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)
    entries: dict[str, Any] = {u.name: u.to_entry() for u in users.values()}
    entries[name] = User(name, roles, _digest(token), tokens_per_day, concurrent_jobs).to_entry()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as out:  # mkstemp makes it 0600: only the operator reads the hashes
        yaml.safe_dump({"users": entries}, out, sort_keys=True)
    os.replace(tmp, path)
    return token


def authenticate(users: dict[str, User], token: str) -> User | None:
    """The user whose token this is, comparing digests in constant time; None for an unknown token."""
    presented = _digest(token)
    found = None
    for user in users.values():  # every entry is compared, so timing does not tell which one matched
        if hmac.compare_digest(presented, user.token_sha256):
            found = user
    return found
