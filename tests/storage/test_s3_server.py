"""The test S3 server is real enough to rely on: `If-None-Match: *` holds when processes race for one key.

This checks the server with obstore alone (not our backend), so a failure here points at the server, and the
backend conformance tests (test_backends.py) can trust it.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from create_race import CreateFn, check_one_winner_each, race_to_create

WRITERS = 4
ROUNDS = 20


def _raw_create(url: str) -> CreateFn:
    """A bare obstore client on the bucket of `url`: PUT with `If-None-Match: *` (mode="create")."""
    import obstore
    from obstore.store import S3Store

    store = S3Store(urlsplit(url).netloc, client_options={"allow_http": True})

    def create(key: str, data: bytes) -> bool:
        try:
            obstore.put(store, key, data, mode="create")
        except obstore.exceptions.AlreadyExistsError:
            return False
        return True

    return create


def test_conditional_create_has_exactly_one_winner_per_round(s3_url: str) -> None:
    import obstore
    from obstore.store import S3Store

    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    outcomes = race_to_create(_raw_create, s3_url, writers=WRITERS, rounds=ROUNDS)
    store = S3Store(urlsplit(s3_url).netloc, client_options={"allow_http": True})
    check_one_winner_each(outcomes, lambda key: obstore.get(store, key).bytes().to_bytes())


def test_a_plain_put_still_overwrites(s3_url: str) -> None:
    """The server does not make every put exclusive (which would pass the race test for the wrong reason)."""
    import obstore
    from obstore.store import S3Store

    store = S3Store(urlsplit(s3_url).netloc, client_options={"allow_http": True})
    obstore.put(store, "k", b"first")
    obstore.put(store, "k", b"second")
    assert obstore.get(store, "k").bytes().to_bytes() == b"second"
    assert _raw_create(s3_url)("k", b"third") is False
