"""`actcache report` on real solve, probe and geometry outputs of a tiny-llama cache: the page holds one inline
SVG per plot and the numbers of the JSON it was made from, fetches nothing, and renders in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from actcache.actcache_cli import main
from job_fixtures import build, story_jsonl

CHROMIUM = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
PLOTS = 6  # AUROC by layer, eigen-spectra, head heatmaps, nearest-concept map, reliability diagrams, CKA matrix
EXTERNAL = re.compile(r"""(?:src|href|srcset|action)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, tiny_llama_dir) -> dict[str, Path]:
    """solve, probe (joy vs the rest) and geometry outputs of one tiny cache, each made by its CLI command."""
    root = tmp_path_factory.mktemp("html-report")
    corpus = story_jsonl(root / "stories.jsonl")
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    for i, row in enumerate(rows):  # every third document held out, so the test split has both classes
        row.update(split="test" if i % 3 == 2 else "train", joy="yes" if row.get("concept") == "joy" else "no")
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cache = str(build(tiny_llama_dir, corpus, root / "cache", "1,3"))
    out = {name: root / name for name in ("solve", "probe", "geometry")}
    assert main(["solve", "--cache", cache, "--out", str(out["solve"]), "--split-field", "split",
                 "--methods", "caa,subspace,heads,ridge,quality", "--device", "cpu"]) == 0
    assert main(["probe", "--cache", cache, "--out", str(out["probe"]), "--label-field", "joy", "--positive", "yes",
                 "--layers", "1,3", "--device", "cpu"]) == 0
    assert main(["geometry", "--cache", cache, "--out", str(out["geometry"]), "--device", "cpu"]) == 0
    return out


def _report(outputs: dict[str, Path], page: Path) -> str:
    assert main(["report", "--solve", str(outputs["solve"]), "--probe", str(outputs["probe"]),
                 "--geometry", str(outputs["geometry"]), "--out", str(page)]) == 0
    return page.read_text()


def test_report_holds_every_plot_and_the_numbers_it_shows(outputs, tmp_path, capsys):
    html = _report(outputs, tmp_path / "report.html")
    assert f"({PLOTS} plots)" in capsys.readouterr().out
    assert html.count('<figure class="plot"><svg') == html.count("<svg") == PLOTS
    assert not EXTERNAL.search(html) and "<script" not in html and "<link" not in html and "<img" not in html
    quality = json.loads((outputs["solve"] / "quality.json").read_text())
    for name, q in quality.items():  # the triage table: each concept's label as quality.json says
        assert f"<td>{name}</td><td>{q['triage']}</td><td>{q['n_positive_stories']}</td>" in html
    geometry = json.loads((outputs["geometry"] / "geometry.json").read_text())
    cka_svg = html[html.index("Layer geometry"):]
    for value in np.asarray(geometry["cka"]["matrix"]).flat:  # matplotlib keeps each drawn text as a comment
        assert f"<!-- {value:.2f} -->" in cka_svg
    metrics = json.loads((outputs["probe"] / "metrics.json").read_text())
    for layer, m in metrics.items():
        assert f"<!-- layer {layer}: ECE {m['ece']:.3f} -->" in html
        assert f"<td>{layer}</td><td>{m['auroc']:.3f}</td><td>{m['ece']:.3f}</td>" in html


def test_report_refuses_what_it_cannot_read(outputs, tmp_path, capsys):
    page = tmp_path / "r.html"
    assert main(["report", "--solve", str(outputs["probe"]), "--out", str(page)]) == 2  # a probe is no solve
    assert "quality.json does not exist" in capsys.readouterr().err and not page.exists()
    assert main(["report", "--out", str(page)]) == 2
    assert main(["report", "--geometry", str(outputs["geometry"]), "--out", str(page)]) == 0
    assert main(["report", "--geometry", str(outputs["geometry"]), "--out", str(page)]) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary: run .ci/setup.sh (installs Debian's chromium)")
def test_report_renders_in_headless_chromium(outputs, tmp_path):
    from matplotlib.image import imread

    page = tmp_path / "report.html"
    _report(outputs, page)
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,3000"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert dom.count("<svg") == dom.count('<figure class="plot">') == PLOTS  # every plot parsed as SVG
    assert "<img" not in dom and not EXTERNAL.search(dom)
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120, check=True)
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (3000, 1200)
    for band in np.array_split(pixels, 3):  # top, middle and bottom of the page all hold drawn content
        assert len(np.unique(band.reshape(-1, 3), axis=0)) > 50, "a blank band in the rendered page"
