"""A story-layout text that is a positive of two concepts counts for both (issue 7.4): solve and sweep against a
numpy reference computed from `cache.pooled` with each document's concepts read from its metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from actcache.solvers import read_readout
from actcache.solvers.job import SolveSettings, solve_cache
from actcache.solvers.job_inputs import LabelSpec
from actcache.solvers.sweep import SweepSettings, sweep_cache, variant_name
from actcache.storage import open_cache
from job_fixtures import CONCEPTS, SAME, build, cosine, reference_subspace, story_jsonl
from sklearn.metrics import roc_auc_score

LAYER = 3
# (text, its concepts, scenario, split): each text appears once per concept in the corpus
TWICE = [
    ("Story both: furious shouting, then trembling in the dark, afraid of the footsteps.", ("anger", "fear"), None,
     "train"),
    ("In the kitchen the kettle boiled while Sam was laughing and dancing, yet trembling and afraid.",
     ("joy", "fear"), "kitchen", "train"),
    ("Held out: laughing with bright smiles while shouting with rage and clenched fists.", ("anger", "joy"), None,
     "test"),
    ("Held out too: trembling, heart pounding, then furious and slamming the door.", ("fear", "anger"), None,
     "test"),
]


@pytest.fixture(scope="module")
def multi_cache(tmp_path_factory, tiny_llama_dir) -> Path:
    root = tmp_path_factory.mktemp("multi-concept")
    corpus = story_jsonl(root / "stories.jsonl")
    with corpus.open("a") as handle:
        for text, concepts, scenario, split in TWICE:
            for c in concepts:
                row = {"text": text, "concept": c, "role": "positive", "split": split}
                handle.write(json.dumps(row | ({"scenario": scenario} if scenario else {})) + "\n")
    return build(tiny_llama_dir, corpus, root / "cache", str(LAYER))


def _concepts_of(meta: dict) -> set[str]:
    named = meta.get("concept")
    return {c for c in (named if isinstance(named, list) else [named]) if c is not None}


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(np.linalg.norm(v), 1e-6)


class Reference:
    """Pooled rows, membership (n, C) and splits straight from `cache.pooled` and the documents' metadata."""

    def __init__(self, cache: Path, pooling: str = "last") -> None:
        reader = open_cache(cache)
        self.x, self.keys, self.metas = reader.pooled("resid_post", LAYER, pooling)
        self.x = self.x.astype(np.float64)
        self.members = np.array([[c in _concepts_of(m) for c in CONCEPTS] for m in self.metas])
        self.fit = np.array([m["split"] == "train" for m in self.metas])
        self.test = ~self.fit
        self.trajectories = [reader.activations("resid_post", LAYER, k).astype(np.float64) for k in self.keys]

    def caa(self, members: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        pos, neg = self.fit & members[:, k], self.fit & ~members[:, k]
        diff = self.x[pos].mean(0) - self.x[neg].mean(0)
        return _unit(diff), diff

    def mean_pairs(self, k: int) -> np.ndarray:
        """The `mean` aggregator: each fitted framing of concept k minus its scenario's fitted baselines' mean."""
        scenario = [m.get("scenario") for m in self.metas]
        diffs = []
        for i in np.flatnonzero(self.fit & self.members[:, k]):
            bases = [j for j in np.flatnonzero(self.fit) if self.metas[j]["role"] == "baseline"
                     and scenario[i] is not None and scenario[j] == scenario[i]]
            if bases:
                diffs.append(self.x[i] - self.x[bases].mean(0))
        return _unit(np.mean(diffs, axis=0))

    def first_concept_only(self) -> np.ndarray:
        """The membership a one-concept-per-document implementation would use: each text's first concept."""
        out = np.zeros_like(self.members)
        for i, m in enumerate(self.metas):
            named = m.get("concept")
            if named is not None:
                out[i, CONCEPTS.index(named[0] if isinstance(named, list) else named)] = True
        return out


def _auroc(ref: Reference, members: np.ndarray, vectors: np.ndarray) -> list[float]:
    proj = ref.x[ref.test] @ vectors.T  # (n_test, C)
    return [float(roc_auc_score(members[ref.test][:, k], proj[:, k])) for k in range(len(CONCEPTS))]


def test_a_text_of_two_concepts_is_a_positive_of_both(multi_cache, tmp_path):
    ref = Reference(multi_cache, "mean")  # mean pooling: a held-out ranking that is not perfect (AUROC 0.83)
    assert (ref.members.sum(1) == 2).sum() == len(TWICE)  # the build kept each repeated text once, with both labels
    settings = SolveSettings(methods=("caa", "subspace"), pooling="mean", layers=str(LAYER),
                             labels=LabelSpec(split_field="split"))
    result = solve_cache(multi_cache, tmp_path / "out", settings)
    caa_file, subspace_file = read_readout(tmp_path / "out"), read_readout(tmp_path / "out", "subspace")
    assert caa_file.concepts == CONCEPTS
    expected = np.stack([ref.caa(ref.members, k)[0] for k in range(len(CONCEPTS))])
    for k, c in enumerate(CONCEPTS):
        assert cosine(caa_file.vectors[LAYER][k].double().numpy(), expected[k]) >= SAME, c
        diff = ref.caa(ref.members, k)[1]
        pos = list(np.flatnonzero(ref.fit & ref.members[:, k]))
        neg = list(np.flatnonzero(ref.fit & ~ref.members[:, k]))
        sub, _ = reference_subspace(ref.trajectories, pos, neg, diff)
        assert cosine(subspace_file.vectors[LAYER][k].double().numpy(), sub) >= SAME, c
    # counting each text in its first concept only gives other vectors: the test data can tell the two apart
    single = ref.first_concept_only()
    assert min(cosine(expected[k], ref.caa(single, k)[0]) for k in range(len(CONCEPTS))) < 0.9999
    # held-out AUROC labels each test document a positive of every one of its concepts
    auroc = _auroc(ref, ref.members, expected)
    assert result.evaluation["caa"][LAYER]["auroc"] == pytest.approx(auroc, abs=1e-12)
    assert auroc != pytest.approx(_auroc(ref, single, expected), abs=1e-3)  # the labels matter here
    assert json.loads((tmp_path / "out" / "quality.json").read_text())["fear"]["n_positive_stories"] == int(
        (ref.fit & ref.members[:, CONCEPTS.index("fear")]).sum())


def test_sweep_counts_a_text_in_each_of_its_concepts(multi_cache, tmp_path):
    poolings = ("last", "mean")
    sweep_cache(multi_cache, tmp_path / "sweep", SweepSettings(
        poolings=poolings, methods=("caa", "mean"), layers=str(LAYER), labels=LabelSpec(split_field="split")))
    scores = json.loads((tmp_path / "sweep" / "comparison.json").read_text())["heldout_per_concept"]
    for pooling in poolings:
        ref = Reference(multi_cache, pooling)
        caa = read_readout(tmp_path / "sweep" / "variants" / variant_name("caa", pooling)).vectors[LAYER]
        mean = read_readout(tmp_path / "sweep" / "variants" / variant_name("mean", pooling)).vectors[LAYER]
        expected = np.stack([ref.caa(ref.members, k)[0] for k in range(len(CONCEPTS))])
        for k, c in enumerate(CONCEPTS):
            assert cosine(caa[k].double().numpy(), expected[k]) >= SAME, (pooling, c)
            assert cosine(mean[k].double().numpy(), ref.mean_pairs(k)) >= SAME, (pooling, c)
        got = scores[variant_name("caa", pooling)][str(LAYER)]["auroc"]
        assert got == pytest.approx(_auroc(ref, ref.members, expected), abs=1e-12), pooling
