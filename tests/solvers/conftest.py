"""Synthetic cached activations with planted structure, shaped like what the cache reader yields.

Story layout: per concept some stories (no scenario) and one framing per scenario; one baseline per
scenario. Residual tokens carry a large common offset (to exercise float64 cancellation), a scenario
vector, noise and, for positives, a per-token multiple of the concept's planted direction. attn_z
(n_heads x head_dim) carries the concept in one planted head, and heads have different noise levels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest


@dataclass(frozen=True)
class Doc:
    key: str
    meta: dict
    n_tokens: int


@dataclass
class Corpus:
    docs: list[Doc]
    resid: list[np.ndarray]  # per doc (n_tok, d) float32
    attn: list[np.ndarray]  # per doc (n_tok, n_heads * head_dim) float32
    concepts: list[str]
    directions: np.ndarray  # (C, d) planted unit directions
    planted_head: dict[str, int]
    n_heads: int
    head_dim: int
    w_o: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (d, n_heads * head_dim)

    def stream(self, hook: str = "resid_post"):
        """(doc, array) pairs in document order, as the reader's iter_activations yields them."""
        arrays = self.resid if hook == "resid_post" else self.attn
        yield from zip(self.docs, arrays, strict=True)


def make_corpus(
    *,
    seed: int = 0,
    d: int = 24,
    n_heads: int = 12,
    head_dim: int = 4,
    concepts: tuple[str, ...] = ("anger", "calm", "fear", "joy"),
    n_scenarios: int = 5,
    n_stories: int = 3,
    split_every: int | None = None,
) -> Corpus:
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((len(concepts), d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    offset = 30.0 + rng.standard_normal(d)  # common large offset
    scenario_vecs = 0.5 * rng.standard_normal((n_scenarios, d))
    head_noise = rng.uniform(0.5, 2.0, n_heads)  # per-head noise level
    head_write = rng.standard_normal((len(concepts), head_dim))
    planted_head = {c: (3 * k + 1) % n_heads for k, c in enumerate(concepts)}

    specs: list[tuple[str, dict]] = []
    for c in concepts:
        specs += [
            (f"stories/{c}#{j}", {"concept": c, "role": "positive", "source": "stories"}) for j in range(n_stories)
        ]
    for s in range(n_scenarios):
        specs += [
            (f"paired/s{s}/{c}", {"concept": c, "scenario": f"s{s}", "role": "positive", "source": "paired"})
            for c in concepts
        ]
        specs.append((f"paired/s{s}/baseline", {"scenario": f"s{s}", "role": "baseline", "source": "paired"}))

    docs, resid, attn = [], [], []
    for i, (key, meta) in enumerate(specs):
        if split_every is not None:
            meta = {**meta, "split": "test" if i % split_every == split_every - 1 else "train"}
        n_tok = int(rng.integers(4, 11))
        h = offset + rng.standard_normal((n_tok, d))
        z = rng.standard_normal((n_tok, n_heads, head_dim)) * head_noise[None, :, None]
        if "scenario" in meta:
            h += scenario_vecs[int(meta["scenario"][1:])]
        if "concept" in meta:
            k = concepts.index(meta["concept"])
            h += rng.uniform(0.0, 6.0, (n_tok, 1)) * directions[k]
            z[:, planted_head[meta["concept"]]] += 3.0 * head_write[k]
        docs.append(Doc(key, meta, n_tok))
        resid.append(h.astype(np.float32))
        attn.append(z.reshape(n_tok, -1).astype(np.float32))
    w_o = rng.standard_normal((d, n_heads * head_dim)).astype(np.float32)
    return Corpus(docs, resid, attn, list(concepts), directions, planted_head, n_heads, head_dim, w_o)


@pytest.fixture(scope="session")
def corpus() -> Corpus:
    return make_corpus()


@pytest.fixture(scope="session")
def corpus_factory():
    """`make_corpus` itself, for tests that need a variant (split field, other sizes)."""
    return make_corpus
