"""S3 and S3-compatible stores through obstore (Rust `object_store`), the client zarr's `ObjectStore` wraps.

Endpoint, region and credentials come only from the standard places, never from the cache or our arguments:
AWS_ENDPOINT_URL(_S3), AWS_REGION, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, web identity
and instance roles (all read by obstore itself), and a named profile (AWS_PROFILE, read through boto3 when it is
installed). `put_if_absent` is a PUT with `If-None-Match: *`: the store answers 412 to every writer but the first.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..errors import CacheError
from .backend import ObjectInfo, StorageBackend, check_key, check_prefix

if TYPE_CHECKING:
    from obstore.store import S3Store
    from zarr.abc.store import Store

__all__ = ["ObjectStoreBackend"]


class ObjectStoreBackend(StorageBackend):
    """Objects under `s3://bucket/prefix`; keys are their names relative to the prefix."""

    def __init__(self, bucket: str, prefix: str = "") -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = s3_store(bucket, self.prefix)

    @property
    def _store(self) -> S3Store:
        _refuse_after_fork(self.url)
        return self._client

    def __getstate__(self) -> dict[str, str]:
        return {"bucket": self.bucket, "prefix": self.prefix}  # a spawned worker or a Ray task builds its client

    def __setstate__(self, state: dict[str, str]) -> None:
        self.__init__(state["bucket"], state["prefix"])  # type: ignore[misc]

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def get(self, key: str) -> bytes:
        import obstore

        with self._errors(key):
            return obstore.get(self._store, check_key(key)).bytes().to_bytes()

    def put(self, key: str, data: bytes) -> None:
        import obstore

        with self._errors(key):
            obstore.put(self._store, check_key(key), data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        import obstore

        with self._errors(key):
            try:
                obstore.put(self._store, check_key(key), data, mode="create")
            except obstore.exceptions.AlreadyExistsError:
                return False
        return True

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        import obstore

        with self._errors(key):
            result = obstore.get(self._store, check_key(key))
            return result.bytes().to_bytes(), str(result.meta["e_tag"])

    def put_if_version(self, key: str, data: bytes, version: str) -> str | None:
        import obstore

        with self._errors(key):
            try:  # PUT with If-Match: the store answers 412 when the object changed or is gone
                result = obstore.put(self._store, check_key(key), data, mode={"e_tag": version})
            except (obstore.exceptions.PreconditionError, obstore.exceptions.NotFoundError):
                return None
        return str(result["e_tag"])

    def put_unpublished(self, key: str, data: bytes) -> None:
        self.put(key, data)  # a completed PUT is durable and whole

    def sync(self, prefix: str) -> None:
        """Nothing to do: every completed PUT is already durable."""

    def list_info(self, prefix: str, start_after: str = "") -> dict[str, ObjectInfo]:
        import obstore

        # obstore lists whole path segments (`a/b` means the folder `a/b/`): list the folder, then filter
        folder = check_prefix(prefix).rpartition("/")[0]
        with self._errors(prefix):
            return {meta["path"]: ObjectInfo(int(meta["size"]), meta["last_modified"].timestamp())
                    for batch in obstore.list(self._store, folder or None, offset=start_after or None)
                    for meta in batch if meta["path"].startswith(prefix)}

    def list_dirs(self, prefix: str = "") -> list[str]:
        import obstore

        with self._errors(prefix):  # ListObjectsV2 with delimiter `/`: the common prefixes, no object below them
            found = obstore.list_with_delimiter(self._store, check_prefix(prefix).rstrip("/") or None)
        return sorted(f"{name.rstrip('/')}/" for name in found["common_prefixes"])

    def delete_prefix(self, prefix: str) -> None:
        import obstore

        keys = self.list_prefix(prefix)
        with self._errors(prefix):
            for start in range(0, len(keys), 1000):  # one DeleteObjects request per 1000 keys
                obstore.delete(self._store, keys[start:start + 1000])

    def delete(self, key: str) -> None:
        import obstore

        with self._errors(key):
            obstore.delete(self._store, check_key(key))

    def size(self, key: str) -> int:
        import obstore

        with self._errors(key):
            return int(obstore.head(self._store, check_key(key))["size"])

    def zarr_store(self, path: str = "", *, read_only: bool = True) -> Store:
        import zarr

        prefix = "/".join(part for part in (self.prefix, check_key(path) if path else "") if part)
        return zarr.storage.ObjectStore(s3_store(self.bucket, prefix), read_only=read_only)

    @contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """obstore's errors as ours: a missing object is FileNotFoundError, refused access a one-line CacheError."""
        import obstore

        where = f"{self.url}/{key}"
        try:
            yield
        except obstore.exceptions.NotFoundError:
            raise FileNotFoundError(f"no object {where}") from None
        except (obstore.exceptions.PermissionDeniedError, obstore.exceptions.UnauthenticatedError) as error:
            raise CacheError(
                f"S3 refused access to {where} ({type(error).__name__}): check AWS_ACCESS_KEY_ID / AWS_PROFILE "
                "and the bucket policy"
            ) from None


_CONFIG_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION",
                     "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


def s3_store(bucket: str, prefix: str) -> S3Store:
    """An obstore S3Store for `bucket`/`prefix`, configured only from the standard AWS_* environment.

    Building a client costs ~40-60 ms of CPU, and opening a cache wants two (the backend's, zarr's): one client per
    location, process and configuration is kept and shared.
    """
    _refuse_after_fork(f"s3://{bucket}/{prefix}")
    global _used
    _used = True
    config = tuple(os.environ.get(name) for name in _CONFIG_VARIABLES)
    return _cached_store(bucket, prefix, config)


_used = False  # this process has built an S3 client
_forked_after_use = False  # ... and is a fork of one that had: its clients would hang (obstore's runtime is gone)


def _refuse_after_fork(where: str) -> None:
    """A forked child of a process that used S3 would hang on its first request: say so instead."""
    if _forked_after_use:
        raise CacheError(
            f"{where}: this process was forked from one that already used S3, and obstore's runtime does not "
            "survive a fork: start workers with spawn, e.g. DataLoader(..., multiprocessing_context='spawn')"
        )


def _after_fork_in_child() -> None:
    global _forked_after_use
    _forked_after_use = _used


os.register_at_fork(after_in_child=_after_fork_in_child)


@functools.lru_cache(maxsize=64)
def _cached_store(bucket: str, prefix: str, config: tuple[str | None, ...]) -> S3Store:
    from obstore.store import S3Store

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    options: dict[str, Any] = {}
    if endpoint.startswith("http://"):  # a local or lab server without TLS: the user chose it by its URL
        options["client_options"] = {"allow_http": True}
    provider = _profile_credentials()
    if provider is not None:
        options["credential_provider"] = provider
    return S3Store(bucket, prefix=prefix or None, **options)


def _profile_credentials() -> Any:
    """boto3's resolver for a named profile (AWS_PROFILE without keys in the environment), else None.

    obstore reads keys, tokens, web identity and instance roles itself but not the ~/.aws profile files.
    """
    if "AWS_PROFILE" not in os.environ or "AWS_ACCESS_KEY_ID" in os.environ:
        return None
    try:
        import boto3
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        raise CacheError(
            f"AWS_PROFILE={os.environ['AWS_PROFILE']} needs boto3 to read the profile: `pip install boto3`, "
            "or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead"
        ) from None
    return Boto3CredentialProvider(boto3.Session())
