"""Probes on SmolLM2 over the sentiment JSONL: document level (last token) and token level (per-token labels from
the JSONL's `token_labels`, relabelled onto the cache), every metric recomputed with scikit-learn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from actcache.cache_builder.labelling import label_cache
from actcache.solvers.analyses.probe import ProbeSettings, probe_cache
from actcache.storage import open_cache
from job_fixtures import build
from probe_checks import check_against_sklearn, predictions

pytestmark = pytest.mark.slow  # builds a SmolLM2 cache (minutes on a shared CPU)

SENTIMENT = Path(__file__).resolve().parents[2] / "data" / "sentiment.jsonl"
UNLABELLED = 3  # the first tokens of each document carry no sentiment yet: null in token_labels


@pytest.fixture(scope="module")
def sentiment_cache(tmp_path_factory, smollm2_dir) -> Path:
    root = tmp_path_factory.mktemp("smollm2-probe")
    cache = build(smollm2_dir, SENTIMENT, root / "cache", "8,15")
    reader = open_cache(cache)
    n_tokens = {reader.text(d.key): d.n_tokens for d in reader.documents()}
    rows = []
    for line in SENTIMENT.read_text().splitlines():
        row = json.loads(line)
        n = n_tokens[row["text"]]
        rows.append({**row, "token_labels": [None] * UNLABELLED + [row["sentiment"]] * (n - UNLABELLED)})
    corpus = root / "sentiment.jsonl"  # the same file name: its `source` metadata stays the same
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    label_cache(cache, corpus)
    return cache


def test_document_probe_separates_the_test_split(sentiment_cache, tmp_path):
    settings = ProbeSettings(label_field="sentiment", positive="positive", layers="8,15", pooling="last")
    probe_cache(sentiment_cache, tmp_path / "out", settings)
    metrics = check_against_sklearn(tmp_path / "out", "classify", "positive")
    assert metrics["15"]["auroc"] >= 0.9 and metrics["15"]["accuracy"] >= 0.8
    assert 0.3 <= metrics["15"]["base_rate"] <= 0.7


def test_token_probe_from_token_labels(sentiment_cache, tmp_path):
    settings = ProbeSettings(label_field="token_labels", positive="positive", layers="15", pooling="token")
    probe_cache(sentiment_cache, tmp_path / "out", settings)
    metrics = check_against_sklearn(tmp_path / "out", "classify", "positive")
    docs = open_cache(sentiment_cache).documents()
    test = [d for d in docs if d.meta["split"] == "test"]
    assert metrics["15"]["n_test"] == sum(d.n_tokens - UNLABELLED for d in test)
    assert min(r["token_index"] for r in predictions(tmp_path / "out")) == UNLABELLED
    assert metrics["15"]["auroc"] >= 0.8
