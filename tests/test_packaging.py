"""The installed names: every package folder ships in the wheel as `actcache.<folder>`, and a user's own
`storage.py` in the working folder cannot shadow ours."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP_PACKAGES = ("storage", "cache_builder", "cluster", "solvers")


def test_every_package_folder_is_listed_for_the_wheel() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {"actcache"} | {
        "actcache." + ".".join(init.parent.relative_to(ROOT).parts)
        for top in TOP_PACKAGES
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert on_disk == listed


def test_a_users_storage_module_does_not_shadow_ours(tmp_path: Path) -> None:
    (tmp_path / "storage.py").write_text("raise RuntimeError('the user module was imported')\n")
    (tmp_path / "solvers.py").write_text("raise RuntimeError('the user module was imported')\n")
    code = "from actcache import open_cache; import actcache.solvers; print(open_cache.__module__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "actcache.storage.reader"
