"""Fixtures of the storage tests (helpers live in storage_fixtures.py; the S3 test server in tests/s3_server.py)."""

from storage_fixtures import written_cache  # noqa: F401 - a fixture, used by name
