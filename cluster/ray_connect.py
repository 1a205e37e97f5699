"""Joining a Ray cluster (or starting a local one) without hanging on an address that does not answer.

`ray.init(address=...)` retries a silent address for minutes; a user who mistyped `--address` deserves one line
at once. So a `host:port` (or `ray://host:port`) address is probed with a plain TCP connect first.
"""

from __future__ import annotations

import os
import socket

from actcache.storage.errors import InputError

__all__ = ["ClusterError", "CONNECT_TIMEOUT_S", "check_reachable", "connect", "resolve_address"]

CONNECT_TIMEOUT_S = 5.0


class ClusterError(InputError):
    """The Ray cluster cannot run this build (unreachable, too small); the message says what to change."""


def resolve_address(address: str | None) -> str | None:
    """`--address`, else `RAY_ADDRESS`, else None (start a local Ray instance)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise ClusterError unless something listens at a `host:port` address ('auto' and 'local' pass through)."""
    if address in ("auto", "local"):
        return
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"Ray address {address!r} is not host:port: give e.g. --address 10.0.0.1:6379")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as error:
        raise ClusterError(
            f"Ray address {address} does not answer ({error.strerror or error}): start the cluster there with "
            f"`ray start --head`, fix --address/RAY_ADDRESS, or leave both unset to run locally"
        ) from None


def connect(address: str | None, *, num_cpus: int | None = None) -> bool:
    """Join `address` (checked first) or start a local instance; True when this call started or joined Ray (so
    the caller should `ray.shutdown()` at the end), False when the process was already connected."""
    import ray

    if ray.is_initialized():
        return False
    if address is not None:
        check_reachable(address)
        ray.init(address=address, log_to_driver=False)
    else:
        # "local" starts a fresh instance; None would join whatever cluster this machine last started
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return True
