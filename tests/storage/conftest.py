"""Fixtures of the storage tests (helpers live in storage_fixtures.py; the S3 test server in s3_server.py)."""

from s3_server import s3_server, s3_url  # noqa: F401 - fixtures, used by name
from storage_fixtures import written_cache  # noqa: F401 - a fixture, used by name
