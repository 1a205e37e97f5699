"""Joining a Ray cluster (or starting a local one): every reason a join fails is one line, within seconds.

`ray.init(address=...)` retries for 20 s to minutes, whatever the cause, then raises a traceback. So an address is
checked first, step by step, each step naming its fix:

1. something listens at `host:port` (TCP connect);
2. it speaks gRPC, as a Ray head's GCS port does (HTTP/2 preface answered with SETTINGS), not e.g. the dashboard;
3. the GCS accepts this process: with token authentication (Ray >= 2.52; `ray start --head` turns it on when
   `~/.ray/auth_token` exists) the driver must send the cluster's token. Ray's `ray.init` looks for a local token
   only for `address="auto"`, never for an explicit `host:port`; that is why `--address 127.0.0.1:P` was rejected
   (`InvalidAuthToken`) where `--address auto` joined. Here both behave like `auto`: when the cluster asks for a
   token and one is configured here (`RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH` or `~/.ray/auth_token`), token mode
   is turned on for this process, as Ray does for `auto`; the token is never sent to a cluster that does not ask;
4. the cluster runs this process's Ray and Python versions (Ray refuses a mismatch with a multi-line error).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from actcache.storage.errors import InputError

__all__ = ["ClusterError", "CONNECT_TIMEOUT_S", "check_joinable", "connect", "resolve_address"]

CONNECT_TIMEOUT_S = 5.0
# HTTP/2 client preface + an empty SETTINGS frame: every gRPC server answers with a SETTINGS frame (type 4)
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_HTTP2_SETTINGS = 4
_TOKEN_SOURCES = "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"
_TOKEN_FIX = ("copy the head node's token (`ray get-auth-token` there) to ~/.ray/auth_token on this machine, or set "
              "RAY_AUTH_TOKEN/RAY_AUTH_TOKEN_PATH (docs/CLUSTER.md)")


class ClusterError(InputError):
    """The Ray cluster cannot run this build (unreachable, too small); the message says what to change."""


def resolve_address(address: str | None) -> str | None:
    """`--address`, else `RAY_ADDRESS`, else None (start a local Ray instance)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def check_joinable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise ClusterError unless this process can join the Ray cluster at `address` (`host:port` or `auto`).

    `local` (start a fresh instance) passes; a `ray://` (Ray Client) address gets the TCP check only.
    """
    if address == "local":
        return
    if address.startswith("ray://"):
        _check_listening(address.removeprefix("ray://"), address, timeout)
        return
    gcs = _gcs_address(address)
    _check_listening(gcs, address, timeout)
    _check_speaks_grpc(gcs, address, timeout)
    _check_versions(_gcs_client(gcs, address), address)


def connect(address: str | None, *, num_cpus: int | None = None) -> bool:
    """Join `address` (checked first) or start a local instance; True when this call started or joined Ray (so
    the caller should `ray.shutdown()` at the end), False when the process was already connected."""
    import ray

    if ray.is_initialized():
        return False
    if address is None:
        # "local" starts a fresh instance; None would join whatever cluster this machine last started
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        return True
    check_joinable(address)
    try:
        ray.init(address=address, log_to_driver=False)
    except ConnectionError as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ClusterError(f"could not join the Ray cluster at {address} ({first}): check it with `ray status` "
                           f"on the head node") from None
    return True


def _gcs_address(address: str) -> str:
    """`host:port` as given, or the cluster `ray start` last started on this machine for `auto`."""
    if address != "auto":
        return address
    from ray._private.services import canonicalize_bootstrap_address

    try:
        found = canonicalize_bootstrap_address("auto")
    except ConnectionError:
        found = None
    if found is None:
        raise ClusterError(f"--address auto found no Ray cluster started on this machine (RAY_TMPDIR="
                           f"{os.environ.get('RAY_TMPDIR', '/tmp')}): start one with `ray start --head`, or give "
                           f"--address host:port")
    return found


def _check_listening(target: str, address: str, timeout: float) -> None:
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"Ray address {address!r} is not host:port: give e.g. --address 10.0.0.1:6379")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as error:
        raise ClusterError(
            f"Ray address {address} does not answer ({error.strerror or error}): start the cluster there with "
            f"`ray start --head`, fix --address/RAY_ADDRESS, or leave both unset to run locally"
        ) from None


def _check_speaks_grpc(gcs: str, address: str, timeout: float) -> None:
    """A GCS answers the HTTP/2 preface at once; a dashboard, Ray Client or unrelated port does not."""
    host, _, port = gcs.rpartition(":")
    reply = b""
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
            sock.sendall(_HTTP2_PREFACE)
            reply = sock.recv(9)
    except OSError:
        pass
    if len(reply) < 4 or reply[3] != _HTTP2_SETTINGS:
        raise ClusterError(
            f"Ray address {address} answers but is not a Ray head's GCS port (no gRPC reply): give the port of "
            f"`ray start --head --port` (default 6379), not the dashboard (8265) or Ray Client (10001) port"
        )


def _gcs_client(gcs: str, address: str) -> Any:
    """A GCS client that the cluster accepted, turning on token auth (as `ray.init('auto')` does) when asked."""
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    from ray._raylet import GcsClient  # type: ignore[attr-defined]  # (missing from its stub)
    from ray.exceptions import AuthenticationError

    try:
        return GcsClient(address=gcs)
    except AuthenticationError:
        mode = os.environ.get("RAY_AUTH_MODE")
        if mode is not None and mode.lower() != "token":
            raise ClusterError(f"the Ray cluster at {address} requires token authentication but RAY_AUTH_MODE={mode} "
                               f"here: unset RAY_AUTH_MODE and {_TOKEN_FIX}") from None
        if mode is None and not maybe_enable_token_auth_if_token_available(warn_if_disabled=False):
            raise ClusterError(f"the Ray cluster at {address} requires token authentication and this machine has "
                               f"no token ({_TOKEN_SOURCES}): {_TOKEN_FIX}") from None
    try:
        return GcsClient(address=gcs)
    except AuthenticationError:
        raise ClusterError(f"the Ray cluster at {address} rejected this machine's auth token (from "
                           f"{_TOKEN_SOURCES}): it is not the cluster's token; {_TOKEN_FIX}") from None


def _check_versions(client: Any, address: str) -> None:
    """Ray's own rule (same Ray, same Python patch level by default), said in one line with the fix."""
    from ray._common.usage.usage_lib import get_cluster_metadata
    from ray._private.utils import check_version_info, compute_version_info

    cluster = get_cluster_metadata(client)
    if not cluster:  # a head that has not written its metadata yet: ray.init checks again
        return
    try:
        check_version_info(cluster, "this process")
    except RuntimeError:
        ray_version, python_version = compute_version_info()[:2]
        raise ClusterError(
            f"the Ray cluster at {address} runs Ray {cluster['ray_version']} on Python {cluster['python_version']}"
            f" but this process has Ray {ray_version} on Python {python_version}: run actcache from an environment "
            f"with the cluster's versions (the same image or venv on every node)"
        ) from None
