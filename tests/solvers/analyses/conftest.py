"""Fixtures of the analyses tests: the planted-geometry cache of layered_cache.py, written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from layered_cache import write_layered_cache


@pytest.fixture(scope="session")
def layered_cache(tmp_path_factory) -> Path:
    return write_layered_cache(tmp_path_factory.mktemp("layered") / "cache")
