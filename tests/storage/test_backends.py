"""Both storage backends pass the same conformance suite (backend_conformance.py), plus what is theirs alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from actcache.storage.atomic_dir import TEMP_MARK
from actcache.storage.backends import LocalBackend, ObjectStoreBackend, open_backend
from actcache.storage.errors import CacheError
from backend_conformance import BackendConformance


class TestLocalBackend(BackendConformance):
    @pytest.fixture
    def root_url(self, tmp_path: Path) -> str:
        return str(tmp_path)

    def test_temp_files_of_a_killed_writer_are_never_listed(self, tmp_path: Path) -> None:
        backend = LocalBackend(tmp_path)
        backend.put("commits/000001.json", b"{}")
        (tmp_path / "commits" / f"{TEMP_MARK}abc").write_bytes(b"half a reco")
        (tmp_path / f"{TEMP_MARK}folder").mkdir()
        (tmp_path / f"{TEMP_MARK}folder" / "x").write_bytes(b"")
        assert backend.list_prefix("") == ["commits/000001.json"]

    def test_publishes_leave_no_temp_file_behind(self, tmp_path: Path) -> None:
        backend = LocalBackend(tmp_path)
        backend.put("k", b"1")
        backend.put_if_absent("k", b"2")
        backend.put_if_absent("j", b"3")
        assert sorted(os.listdir(tmp_path)) == ["j", "k"]


class TestObjectStoreBackend(BackendConformance):
    @pytest.fixture
    def root_url(self, s3_url: str) -> str:
        return f"{s3_url}/lab/caches"

    def test_the_url_names_bucket_and_prefix(self, s3_url: str) -> None:
        backend = open_backend(f"{s3_url}/lab/caches/")
        assert isinstance(backend, ObjectStoreBackend)
        assert backend.url == f"{s3_url}/lab/caches"
        assert open_backend(s3_url).url == s3_url

    def test_a_named_profile_is_read_through_boto3(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """AWS_PROFILE without keys in the environment: the profile's keys reach the client (nothing is stored)."""
        from actcache.storage.backends.object_store import _profile_credentials

        credentials = tmp_path / "credentials"
        credentials.write_text("[lab]\naws_access_key_id = profile-key\naws_secret_access_key = profile-secret\n")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
        monkeypatch.setenv("AWS_PROFILE", "lab")
        monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
        provider = _profile_credentials()
        assert provider is not None
        assert (provider.credentials.access_key, provider.credentials.secret_key) == ("profile-key", "profile-secret")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")  # keys in the environment win, as in every AWS tool
        assert _profile_credentials() is None


@pytest.mark.parametrize(
    "url",
    ["gs://bucket/x", "s3://", "s3:///prefix", "s3://key:secret@bucket/x", "s3://bucket/x?region=eu", "s3://b/a/../c"],
)
def test_urls_we_cannot_serve_are_refused_in_one_line(url: str) -> None:
    with pytest.raises(CacheError, match="s3://bucket/prefix"):
        open_backend(url)


def test_paths_open_the_local_backend(tmp_path: Path) -> None:
    for url in (tmp_path, str(tmp_path), f"{tmp_path}/sub/../cache"):
        backend = open_backend(url)
        assert isinstance(backend, LocalBackend)
    assert open_backend(tmp_path).url == str(tmp_path)
