"""What every storage backend must do, written once (as zarr's testing/store.py `StoreTests`).

A backend's test class subclasses `BackendConformance` and supplies one fixture, `root_url`: an empty location
(a folder, a bucket) under which the tests open backends with `open_backend`. Every test here then runs on it.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from actcache.storage.backends import StorageBackend, open_backend
from actcache.storage.errors import CacheError
from create_race import CreateFn, check_one_winner_each, race_key, race_to_create

__all__ = ["BackendConformance"]


def _backend_create(url: str) -> CreateFn:
    """The race's writer: one backend per process, as separate builders would have."""
    return open_backend(url).put_if_absent


def _backend_swap(url: str) -> CreateFn:
    """The race's writer for compare-and-swap: it reads every key's version before the first round starts, so all
    writers of a round swap against the same version and at most one may succeed."""
    backend = open_backend(url)
    versions = {key: backend.get_versioned(key)[1] for key in backend.list_prefix("race/")}
    return lambda key, data: backend.put_if_version(key, data, versions[key]) is not None


class BackendConformance:
    @pytest.fixture
    def root_url(self) -> str:
        raise NotImplementedError("a backend's test class provides `root_url`: an empty folder or bucket URL")

    @pytest.fixture
    def backend(self, root_url: str) -> StorageBackend:
        return open_backend(f"{root_url}/cache")

    def test_put_then_get_returns_the_same_bytes(self, backend: StorageBackend) -> None:
        data = bytes(range(256)) * 5
        backend.put("commits/000001.json", data)
        backend.put("empty", b"")
        assert backend.get("commits/000001.json") == data
        assert backend.get("empty") == b""
        assert backend.size("commits/000001.json") == len(data)
        assert backend.size("empty") == 0

    def test_read_into_fills_a_reused_buffer_and_refuses_an_object_too_large(self, backend: StorageBackend) -> None:
        data = bytes(range(200))
        backend.put("seg/c/0/0", data)
        buffer = bytearray(256)
        assert backend.read_into("seg/c/0/0", memoryview(buffer)) == len(data)
        assert bytes(buffer[:len(data)]) == data
        with pytest.raises(ValueError, match="buffer"):
            backend.read_into("seg/c/0/0", memoryview(bytearray(100)))
        with pytest.raises(FileNotFoundError):
            backend.read_into("seg/c/0/1", memoryview(buffer))

    def test_put_if_version_swaps_only_the_version_it_read(self, backend: StorageBackend) -> None:
        backend.put("claims/a.json", b"first")
        data, version = backend.get_versioned("claims/a.json")
        assert data == b"first"
        newer = backend.put_if_version("claims/a.json", b"second", version)
        assert newer is not None and newer != version
        assert backend.put_if_version("claims/a.json", b"stale", version) is None
        assert backend.get_versioned("claims/a.json") == (b"second", newer)
        assert backend.put_if_version("claims/gone.json", b"x", version) is None
        with pytest.raises(FileNotFoundError):
            backend.get("claims/gone.json")
        assert backend.list_prefix("claims/") == ["claims/a.json"]  # no swap leftovers are listed

    def test_put_if_version_has_one_winner_across_processes(self, backend: StorageBackend) -> None:
        """4 processes swap each of 20 keys from the version they all read: one wins each."""
        for round_ in range(20):
            backend.put(race_key(round_), b"initial")
        outcomes = race_to_create(_backend_swap, backend.url, writers=4, rounds=20)
        check_one_winner_each(outcomes, backend.get)

    def test_unpublished_objects_sizes_and_prefix_delete(self, backend: StorageBackend) -> None:
        backend.put_unpublished("segments/s1/a/c/0/0", b"12345")
        backend.put_unpublished("segments/s1/a/c/1/0", b"12")
        backend.put("segments/s10/zarr.json", b"{}")
        backend.sync("segments/s1/")
        before = time.time()
        listed = backend.list_info("segments/s1/")
        assert {key: info.size for key, info in listed.items()} == {"segments/s1/a/c/0/0": 5, "segments/s1/a/c/1/0": 2}
        assert all(before - 60 < info.modified <= before + 1 for info in listed.values())
        backend.delete_prefix("segments/s1/")
        assert backend.list_prefix("segments/") == ["segments/s10/zarr.json"]

    def test_missing_objects_are_file_not_found(self, backend: StorageBackend) -> None:
        backend.put("a/b", b"x")
        for key in ("nothing", "a", "a/b/c"):
            with pytest.raises(FileNotFoundError):
                backend.get(key)
            with pytest.raises(FileNotFoundError):
                backend.size(key)

    def test_put_replaces(self, backend: StorageBackend) -> None:
        backend.put("k", b"old")
        backend.put("k", b"new, and longer")
        assert backend.get("k") == b"new, and longer"

    def test_put_if_absent_creates_once_and_keeps_the_first(self, backend: StorageBackend) -> None:
        assert backend.put_if_absent("claims/doc-7.json", b"first") is True
        assert backend.put_if_absent("claims/doc-7.json", b"second") is False
        assert backend.get("claims/doc-7.json") == b"first"
        backend.put("existing", b"by put")
        assert backend.put_if_absent("existing", b"create") is False
        assert backend.get("existing") == b"by put"

    def test_list_prefix_is_a_sorted_string_prefix(self, backend: StorageBackend) -> None:
        keys = ["ab", "a/bc", "a/b/c", "a/b/d/e", "a/x.json", "z"]
        for key in keys:
            backend.put(key, key.encode())
        assert backend.list_prefix("") == sorted(keys)
        assert backend.list_prefix("a/b") == ["a/b/c", "a/b/d/e", "a/bc"]
        assert backend.list_prefix("a/b/") == ["a/b/c", "a/b/d/e"]
        assert backend.list_prefix("a") == ["a/b/c", "a/b/d/e", "a/bc", "a/x.json", "ab"]
        assert backend.list_prefix("a/x") == ["a/x.json"]
        assert backend.list_prefix("nothing/") == []
        assert backend.list_prefix("a/y") == []

    def test_list_prefix_after_a_key_lists_only_the_keys_strictly_after_it(self, backend: StorageBackend) -> None:
        keys = ["j/20260101-a", "j/20260101-b", "j/20260102-a", "j/20260103-c", "k/20260102-z"]
        for key in keys:
            backend.put(key, b"")
        assert backend.list_prefix("j/", start_after="j/20260101-b") == ["j/20260102-a", "j/20260103-c"]
        assert backend.list_prefix("j/", start_after="j/20260102-") == ["j/20260102-a", "j/20260103-c"]
        assert backend.list_prefix("j/", start_after="j/2") == keys[:4]
        assert backend.list_prefix("j/", start_after="j/20260103-c") == []
        assert list(backend.list_info("j/2026010", start_after="j/20260102-a")) == ["j/20260103-c"]

    def test_list_dirs_names_the_immediate_child_folders(self, backend: StorageBackend) -> None:
        for key in ["zarr.json", "a/zarr.json", "a/b/c/d", "a/bc/x", "ab/y", "z/w/v"]:
            backend.put(key, b"x")
        assert backend.list_dirs() == ["a/", "ab/", "z/"]
        assert backend.list_dirs("a/") == ["a/b/", "a/bc/"]
        assert backend.list_dirs("a/b/") == ["a/b/c/"]
        assert backend.list_dirs("a/b/c/") == [] and backend.list_dirs("nothing/") == []

    def test_delete_removes_and_deleting_again_is_fine(self, backend: StorageBackend) -> None:
        backend.put("seg/1/c/0", b"chunk")
        backend.delete("seg/1/c/0")
        backend.delete("seg/1/c/0")
        backend.delete("never-there")
        assert backend.list_prefix("seg/") == []
        with pytest.raises(FileNotFoundError):
            backend.get("seg/1/c/0")
        assert backend.put_if_absent("seg/1/c/0", b"again") is True

    @pytest.mark.parametrize("key", ["", "/a", "a/", "a//b", "../escape", "a/./b", "a/../b", "a\\b"])
    def test_keys_that_could_mean_two_things_are_refused(self, backend: StorageBackend, key: str) -> None:
        with pytest.raises(CacheError, match="invalid storage key"):
            backend.put(key, b"x")
        with pytest.raises(CacheError, match="invalid storage key"):
            backend.put_if_absent(key, b"x")
        with pytest.raises(CacheError, match="invalid storage key"):
            backend.get(key)

    def test_sibling_roots_do_not_see_each_other(self, root_url: str) -> None:
        """`cache` and `cache2` share a string prefix: neither may list or read the other's objects."""
        first, second = open_backend(f"{root_url}/cache"), open_backend(f"{root_url}/cache2")
        first.put("k", b"1")
        second.put("k", b"2")
        assert first.list_prefix("") == ["k"] and second.list_prefix("") == ["k"]
        assert (first.get("k"), second.get("k")) == (b"1", b"2")
        assert open_backend(root_url).list_prefix("") == ["cache/k", "cache2/k"]

    def test_url_reopens_the_same_objects(self, backend: StorageBackend) -> None:
        backend.put("header.json", b"{}")
        assert open_backend(backend.url).get("header.json") == b"{}"

    def test_zarr_store_round_trips_an_array_and_readers_cannot_write(self, backend: StorageBackend) -> None:
        import zarr

        values = np.arange(6 * 5, dtype="uint16").reshape(6, 5)
        array = zarr.create_array(
            backend.zarr_store("seg-1", read_only=False),
            name="resid_post.3",
            shape=values.shape,
            chunks=(4, 5),
            dtype="uint16",
        )
        array[:] = values
        reader = zarr.open_array(backend.zarr_store("seg-1"), path="resid_post.3", mode="r")
        np.testing.assert_array_equal(reader[:], values)
        assert {"seg-1/resid_post.3/zarr.json", "seg-1/resid_post.3/c/0/0", "seg-1/resid_post.3/c/1/0"} <= set(
            backend.list_prefix("seg-1/")
        )
        with pytest.raises(ValueError, match="read.only|read-only"):
            zarr.open_array(backend.zarr_store("seg-1"), path="resid_post.3", mode="r+")[:] = 0
        np.testing.assert_array_equal(reader[:], values)

    def test_put_if_absent_has_one_winner_across_processes(self, backend: StorageBackend) -> None:
        """4 writer processes race for each of 20 keys: one wins each, the others learn they lost."""
        outcomes = race_to_create(_backend_create, backend.url, writers=4, rounds=20)
        check_one_winner_each(outcomes, backend.get)
