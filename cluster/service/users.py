"""The service's users: `users.yaml` maps each name to its roles and the sha256 of its token, never the token."""

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

__all__ = ["ROLES", "User", "UsersError", "add_user", "authenticate", "load_users"]

ROLES = ("submit", "read")
_TOKEN_BYTES = 32  # 256 bits: a plain sha256 of such a token cannot be brute-forced, so no slow hash is needed


class UsersError(InputError):
    """A users file or `user add` request that cannot work; the message names the fix."""


@dataclass(frozen=True)
class User:
    name: str
    roles: tuple[str, ...]
    token_sha256: str


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
        users[str(name)] = User(str(name), tuple(entry.get("roles") or ()), entry["token_sha256"])
    return users


def add_user(path: str | Path, name: str, roles: tuple[str, ...]) -> str:
    """Add `name` with `roles` to the file (written atomically, mode 0600) and return its new token."""
    import yaml

    path = Path(path)
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise UsersError(f"--roles {','.join(roles)}: give one or more of {','.join(ROLES)}")
    users = load_users(path)
    if name in users:
        raise UsersError(f"user {name!r} already exists in {path}; pick another name or remove that entry first")
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    entries: dict[str, Any] = {u.name: {"roles": list(u.roles), "token_sha256": u.token_sha256}
                               for u in users.values()}
    entries[name] = {"roles": list(roles), "token_sha256": _digest(token)}
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
