"""report.md of a real solve (tiny Llama, story labels with a split): what a researcher asks first comes first,
every measure that does not apply says n/a, outliers are quoted, nothing points outside the repository."""

from __future__ import annotations

import json
import re
from pathlib import Path
from statistics import mean

import numpy as np
import pytest
from actcache import open_cache
from actcache.solvers import read_readout
from actcache.solvers.job import SolveSettings, solve_cache
from actcache.solvers.job_inputs import LabelSpec
from job_fixtures import build, story_jsonl

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def story_cache(tmp_path_factory, tiny_llama_dir) -> Path:
    root = tmp_path_factory.mktemp("report")
    return build(tiny_llama_dir, story_jsonl(root / "stories.jsonl"), root / "cache", "1,3")


def _sections(text: str) -> list[str]:
    return re.findall(r"^## (.+)$", text, flags=re.M)


def test_report_leads_with_heldout_separation_per_layer_and_the_best_layer(story_cache, tmp_path):
    result = solve_cache(story_cache, tmp_path / "out", SolveSettings(layers="1,3",
                                                                     labels=LabelSpec(split_field="split")))
    report = (tmp_path / "out" / "report.md").read_text()
    assert _sections(report)[0] == "Does each direction separate its concept?"
    assert _sections(report)[-1] == "Glossary"
    scores = result.evaluation["caa"]
    means = {}
    for layer in (1, 3):
        auroc, acc = mean(scores[layer]["auroc"]), mean(scores[layer]["balanced_accuracy"])
        means[layer] = (auroc, mean(scores[layer]["separation"]))
        row = re.search(rf"^\| {layer} \| ([\d.]+) \| ([\d.]+) \| (-?[\d.]+) \| 3 of 3 \|$", report, flags=re.M)
        assert row, layer
        assert float(row[1]) == pytest.approx(auroc, abs=5e-4) and float(row[2]) == pytest.approx(acc, abs=5e-4)
        assert float(row[3]) == pytest.approx(means[layer][1], abs=5e-3)
    best = max(means, key=lambda layer: means[layer])
    assert f"**Best layer: {best}**" in report
    # the separation, recomputed from the cache's activations and the readout file
    cache, readout = open_cache(story_cache), read_readout(tmp_path / "out")
    test = [d for d in cache.documents() if d.meta["split"] == "test"]
    for k, name in enumerate(readout.concepts):
        v = readout.vectors[3][k].double().numpy()
        proj = np.array([cache.activations("resid_post", 3, d.key)[-1] @ v for d in test])
        pos = np.array([d.meta.get("concept") == name for d in test])
        expected = (proj[pos].mean() - proj[~pos].mean()) / np.sqrt((proj[pos].var() + proj[~pos].var()) / 2)
        assert scores[3]["separation"][k] == pytest.approx(expected, rel=2e-3)  # float16 readout vs float32 vector
    # the triage says what it measures and where; the measures that do not apply say n/a and why
    assert "## Triage of each concept's positives at layer 3" in report
    assert "It does not measure separation" in report
    assert "head conc. n/a: the model has 4 attention heads" in report
    for name in ("anger", "fear", "joy"):  # the triage rows (8 columns): head concentration of 4 heads is n/a
        (row,) = [line for line in report.splitlines() if line.startswith(f"| {name} | ") and line.count("|") == 9]
        assert row.endswith("| n/a |")


def test_report_quotes_outliers_by_their_text_and_cites_nothing_outside(story_cache, tmp_path):
    solve_cache(story_cache, tmp_path / "out", SolveSettings(layers="1,3", labels=LabelSpec(split_field="split")))
    report = (tmp_path / "out" / "report.md").read_text()
    quality = json.loads((tmp_path / "out" / "quality.json").read_text())
    cache = open_cache(story_cache)
    for q in quality.values():
        for key, alignment in q["outlier_stories"]:
            assert f'"{cache.text(key)}" (alignment {alignment:.2f})' in report
            assert key not in report
    for outside in ("SOLVERS.md", "shared/", "DESIGN.md", str(tmp_path), str(story_cache)):
        assert outside not in report


def test_report_without_split_says_what_is_missing(story_cache, tmp_path):
    solve_cache(story_cache, tmp_path / "out", SolveSettings(methods=("caa", "ridge", "quality"), layers="1,3"))
    report = (tmp_path / "out" / "report.md").read_text()
    assert "No held-out split" in report and "--split-field split" in report
    assert "per-head ranking was not run" in report
    assert "Best layer" not in report


def test_docs_cite_no_file_outside_the_repository():
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text()
        assert "shared/" not in text and "SOLVERS.md" not in text, doc
        for target in re.findall(r"\]\(([^)#]+)", text):  # every relative markdown link resolves in the checkout
            if not target.startswith(("http://", "https://")):
                assert (doc.parent / target).resolve().is_relative_to(REPO) and (doc.parent / target).exists(), \
                    (doc, target)
