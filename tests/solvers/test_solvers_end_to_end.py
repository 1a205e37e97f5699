"""The solvers wired the way the job layer will: one pass per (hook, layer), solve, evaluate, write."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from actcache.solvers import (
    LayerPass,
    PassPlan,
    Readout,
    caa_directions,
    concept_quality,
    nearest_concepts,
    neuron_alignment,
    parse_pooling,
    projection_auroc,
    rank_heads_from_totals,
    ridge_reconstruction,
    story_labels,
    story_statistics,
    subspace_direction,
    triage_report,
    write_readout,
)


def test_story_corpus_to_readout(tmp_path, corpus_factory):
    corpus = corpus_factory(split_every=4, n_scenarios=20, n_stories=6)
    labels = story_labels(corpus.docs, split_field="split")
    pooling = parse_pooling("mean")
    layers = (3, 6)  # the synthetic corpus stands in for both layers (scaled for the second)
    per_layer, vectors, subspace = {}, {}, {}
    for layer in layers:
        scale = 1.0 if layer == 3 else 2.0
        plan = PassPlan((pooling,), subspace_concepts=tuple(range(len(labels.concepts))), quality_cap=64)
        lp = LayerPass(labels, 24, plan)
        for i, (_doc, h) in enumerate(corpus.stream()):
            lp.feed(i, h * scale)
        stats = lp.finish()
        moments = stats.moments[str(pooling)]
        vectors[layer] = caa_directions(moments)
        proj = stats.projectors
        subspace[layer] = torch.stack(
            [
                subspace_direction(*proj.total(), *proj.concept_total(c), moments.diff(c)).vector
                for c in range(len(labels.concepts))
            ]
        )
        ridge = ridge_reconstruction(vectors[layer], list(labels.concepts))
        per_layer[layer] = []
        for c in range(len(labels.concepts)):
            docs, pooled = stats.positives[str(pooling)].vectors(c)
            q = story_statistics(pooled, [labels.keys[i] for i in docs], vectors[layer][c])
            q.update(neuron_alignment(vectors[layer][c], None, "no W_down in this test"), **ridge[c].to_dict())
            per_layer[layer].append(q)

    attn = LayerPass(labels, corpus.n_heads * corpus.head_dim, PassPlan((pooling,), squares=True))
    for i, (_doc, z) in enumerate(corpus.stream("attn_z")):
        attn.feed(i, z)
    heads = attn.finish().moments[str(pooling)]

    quality = {}
    for c, name in enumerate(labels.concepts):
        near = nearest_concepts(vectors[6], labels.concepts, c)
        rows = {
            layer: {**per_layer[layer][c], **rank_heads_from_totals(heads, c, corpus.n_heads).to_dict()}
            for layer in layers
        }
        quality[name] = concept_quality(rows, near, len(labels.positives(c)))

    test_docs = [i for i in range(labels.n_docs) if labels.test[i]]
    pooled_test = torch.stack([pooling(torch.from_numpy(corpus.resid[i])) for i in test_docs])
    auroc = projection_auroc(vectors[3], pooled_test, labels.membership(test_docs))
    assert all(a is None or a > 0.9 for a in auroc) and any(a is not None for a in auroc)

    methods = {
        "caa": Readout(labels.concepts, layers, 24, vectors),
        "subspace": Readout(labels.concepts, layers, 24, subspace),
    }
    out = write_readout(tmp_path / "readout", methods, primary="caa", quality=quality, report=triage_report(quality))
    written = json.loads((out / "quality.json").read_text())
    assert list(written) == list(labels.concepts)
    assert written["fear"]["middle_layer"] == 6
    assert written["fear"]["layers"]["6"]["top_heads"][0][0] == corpus.planted_head["fear"]
    assert written["fear"]["layers"]["6"]["neuron_reason"] == "no W_down in this test"
    assert "| fear |" in (out / "report.md").read_text()
    # the same direction at both layers: scaling the activations does not move a unit vector
    np.testing.assert_allclose(vectors[3].numpy(), vectors[6].numpy(), atol=1e-5)


def test_projection_auroc_reference():
    vectors = torch.tensor([[1.0, 0.0]])
    pooled = torch.tensor([[2.0, 0], [0.5, 0], [1.0, 0], [1.0, 0]])
    assert projection_auroc(vectors, pooled, np.array([[1], [0], [0], [1]], bool)) == [0.875]  # (1 + 1 + 1 + 0.5) / 4
    assert projection_auroc(vectors, pooled, np.zeros((4, 1), bool)) == [None]


def test_projection_auroc_memory_is_linear_in_documents():
    """8000 positives x 8000 negatives: a dense comparison matrix would take 64 MB as booleans and 512 MB as
    float64; the sort-based AUROC stays within a few MB (peak RSS, reset just before the call)."""
    def status(field: str) -> int:
        return int(re.search(field + r":\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

    rng = np.random.default_rng(0)
    pooled = torch.from_numpy(rng.standard_normal((16000, 4)))
    members = np.arange(16000)[:, None] < 8000  # (n, 1): the first 8000 are positives
    pooled[:8000, 0] += 1.0  # positives shifted by one standard deviation along the vector
    vectors = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    projection_auroc(vectors, pooled[7990:8010], members[7990:8010])  # loads scikit-learn (not counted)
    before = status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    (auroc,) = projection_auroc(vectors, pooled, members)
    assert status("VmHWM") - before < 32 * 2**20
    assert auroc == pytest.approx(0.760, abs=0.01)  # Phi(1 / sqrt(2)) for a one-sd shift
