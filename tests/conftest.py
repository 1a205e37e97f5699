"""Shared test setup: model caches live under the repo's .cache/ so a run builds each test model once."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("ACTCACHE_HOME", str(REPO_ROOT / ".cache" / "actcache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
