"""The README's first-screen Python session runs as pasted against a real small SmolLM2 cache built where the
README says `actcache demo` puts it (a few stories of the bundled demo corpus, layers 8 and 15)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from actcache.cache_builder.build import BuildSettings, build_cache
from actcache.cache_builder.corpus import DEMO_CORPUS

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = "<!-- first-session:"


def first_session() -> str:
    """The python block right after the README's first-session marker."""
    text = README.read_text()
    after = text[text.index(MARKER):]
    return re.search(r"^```python\n(.*?)^```", after, re.S | re.M)[1]


def test_the_session_is_on_the_first_screen_and_five_lines():
    text = README.read_text()
    code = first_session()
    assert len(code.strip().splitlines()) == 5 and code.startswith("from actcache import open_cache\n")
    assert len(text[:text.index(MARKER)].splitlines()) < 25  # above the fold, before any detail
    for call in ("open_cache(", ".pooled(", " @ ", ".xarray("):
        assert call in code


@pytest.mark.slow
def test_the_readme_session_runs_as_pasted(tmp_path, smollm2_dir):
    corpus = tmp_path / "corpus" / "stories"
    corpus.mkdir(parents=True)
    for concept in ("joy", "calm", "fear"):
        shutil.copy(DEMO_CORPUS / "stories" / f"{concept}.txt", corpus)
    build_cache(BuildSettings(model=str(smollm2_dir), corpus=tmp_path / "corpus", out=tmp_path / "actcache-demo" /
                              "cache", layers="8,15", progress=False))
    run = subprocess.run([sys.executable, "-c", first_session()], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    top = run.stdout.split("<xarray.Dataset>")[0].strip()
    joy = [" ".join(s.split()) for s in (DEMO_CORPUS / "stories" / "joy.txt").read_text().split("\n\n")]
    assert " ".join(top.split()) in joy  # the top document on the joy direction is a joy story
    assert "layer_15" in run.stdout and "(token, feature)" in run.stdout
