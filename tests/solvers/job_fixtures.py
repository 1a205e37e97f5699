"""Caches for the job tests, and an independent reference of the whole solve.

The reference runs a plain transformers forward per document (AutoModelForCausalLM + hooks on the decoder
layers and o_proj inputs), pools as SOLVERS.md says and computes every method with direct numpy float64
maths: per-concept means, explicit projector averages, per-head std, ridge, quality. It shares no code with
solvers/ and never uses streaming totals.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from actcache.cache_builder.build import BuildSettings, build_cache

CONCEPTS = ("anger", "fear", "joy")
_WORDS = {
    "anger": "furious shouting slammed the door with rage and clenched fists",
    "fear": "trembling in the dark, heart pounding, afraid of the footsteps",
    "joy": "laughing and dancing, bright smiles, a wonderful happy morning",
}
_SCENES = {"kitchen": "In the kitchen the kettle boiled while", "station": "At the station the train was late and"}


def story_jsonl(path: Path) -> Path:
    """Story-layout labels in JSONL (concept, role, scenario, split): stories, paired framings, baselines and
    a few held-out documents, of varied lengths."""
    rows = []
    for c in CONCEPTS:
        for j in range(4):
            rows.append({"text": f"Story {j}: " + " ".join([_WORDS[c]] * (1 + j % 3)), "concept": c,
                         "role": "positive", "split": "test" if j == 3 else "train"})
    for scene, opening in _SCENES.items():
        rows.append({"text": f"{opening} Sam waited and read a book.", "scenario": scene, "role": "baseline",
                     "split": "train"})
        for c in CONCEPTS:
            rows.append({"text": f"{opening} Sam was {_WORDS[c]}.", "concept": c, "scenario": scene,
                         "role": "positive", "split": "train"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build(model: str | Path, corpus: Path, out: Path, layers: str) -> Path:
    build_cache(BuildSettings(model=str(model), corpus=corpus, out=out, layers=layers, batch_size=4, progress=False))
    return out


# ---- the independent reference ------------------------------------------------------------------------------

@dataclass
class Reference:
    resid: dict[int, list[np.ndarray]]  # layer -> per document (n_tok, d) float64
    attn: dict[int, list[np.ndarray]]  # layer -> per document (n_tok, H*hd)
    w_down: dict[int, np.ndarray | None]  # layer -> (d, d_ff), None on MoE layers
    w_o: dict[int, np.ndarray]  # layer -> (d, H*hd)


def reference_forward(model_dir: Path, token_ids: list[np.ndarray], layers: list[int]) -> Reference:
    """Unbatched full forward of each document with hooks; weights from the loaded model's modules."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ref = Reference({i: [] for i in layers}, {i: [] for i in layers}, {}, {})
    seen: dict[tuple[str, int], torch.Tensor] = {}
    for ids in token_ids:
        seen.clear()
        handles = []
        for i in layers:
            block = model.model.layers[i]
            handles.append(block.register_forward_hook(
                lambda _m, _a, out, i=i: seen.__setitem__(("resid", i), out[0] if isinstance(out, tuple) else out)))
            handles.append(block.self_attn.o_proj.register_forward_pre_hook(
                lambda _m, args, i=i: seen.__setitem__(("attn", i), args[0])))
        with torch.inference_mode():
            model(torch.as_tensor(ids.astype(np.int64))[None])
        for h in handles:
            h.remove()
        for i in layers:
            ref.resid[i].append(seen[("resid", i)][0].double().numpy())
            ref.attn[i].append(seen[("attn", i)][0].double().numpy())
    for i in layers:
        block = model.model.layers[i]
        down = getattr(block.mlp, "down_proj", None)
        ref.w_down[i] = None if down is None else down.weight.detach().double().numpy()
        ref.w_o[i] = block.self_attn.o_proj.weight.detach().double().numpy()
    return ref


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(np.linalg.norm(v), 1e-6)


def pool(h: np.ndarray, pooling: str) -> np.ndarray:
    if pooling == "last":
        return h[-1]
    if pooling == "mean":
        return h.mean(axis=0)
    if pooling.startswith("mean-skip:"):
        return h[int(pooling.split(":")[1]):].mean(axis=0)
    raise ValueError(pooling)


def reference_caa(x: np.ndarray, pos: list[int], neg: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(unit CAA vector, raw difference of means)."""
    diff = x[pos].mean(axis=0) - x[neg].mean(axis=0)
    return _unit(diff), diff


def reference_subspace(trajectories: list[np.ndarray], pos: list[int], neg: list[int], diff: np.ndarray,
                       k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(unit subspace vector, top-20 eigenvalues) from explicit per-document projectors."""
    d = trajectories[0].shape[1]

    def projector(h: np.ndarray) -> np.ndarray:
        if h.shape[0] < 2:
            v = _unit(h[-1])[:, None]
        else:
            _, s, vh = np.linalg.svd(h - h.mean(axis=0), full_matrices=False)
            keep = (s > 1e-6 * s[0]) & (np.arange(len(s)) < h.shape[0] - 1)
            v = vh[keep].T
        return v @ v.T

    m_pos = sum(projector(trajectories[i]) for i in pos) / len(pos)
    m_neg = sum(projector(trajectories[i]) for i in neg) / len(neg)
    evals, evecs = np.linalg.eigh(m_pos - m_neg)
    evals, evecs = evals[::-1], evecs[:, ::-1]
    out = np.zeros(d)
    for j in range(k):
        e = evecs[:, j] * (1 if evecs[:, j] @ diff >= 0 else -1)
        out += max(evals[j], 0.0) * e
    if out @ diff < 0:
        out = -out
    return _unit(out), evals[:20]


def reference_heads(z: np.ndarray, pos: list[int], neg: list[int], n_heads: int) -> tuple[list[int], np.ndarray,
                                                                                         float]:
    """(top-10 heads by selectivity, selectivity per head, head concentration) from pooled o_proj inputs; the
    concentration is None with 10 heads or fewer (the top 10 would be every head)."""
    zh = z.reshape(len(z), n_heads, -1)
    raw = np.linalg.norm(zh[pos].mean(axis=0) - zh[neg].mean(axis=0), axis=1)
    spread = np.maximum(np.linalg.norm(zh[neg].std(axis=0, ddof=1), axis=1), 1e-6)
    sel = raw / spread
    top = list(np.argsort(-sel, kind="stable")[:10])
    return [int(h) for h in top], sel, float(raw[top].sum() / raw.sum()) if n_heads > 10 else None


def reference_ridge(v: np.ndarray, lam: float = 0.01) -> list[float]:
    r2 = []
    for t in range(len(v)):
        others = np.delete(v, t, axis=0)
        if not len(others):
            r2.append(0.0)
            continue
        a = np.linalg.solve(others @ others.T + lam * np.eye(len(others)), others @ v[t])
        r2.append(1 - np.sum((v[t] - a @ others) ** 2) / np.sum(v[t] ** 2))
    return r2


def reference_quality(pooled_pos: np.ndarray, v: np.ndarray, w_down: np.ndarray | None) -> dict[str, float]:
    centred = pooled_pos - pooled_pos.mean(axis=0)
    s2 = np.linalg.svd(centred, compute_uv=False) ** 2
    proj = pooled_pos @ v
    align = centred @ v / np.linalg.norm(centred, axis=1)
    out = {
        "first_pc_variance_ratio": float(s2[0] / s2.sum()),
        "story_projection_mean": float(proj.mean()),
        "story_projection_std": float(proj.std()),
        "story_projection_min": float(proj.min()),
        "story_projection_max": float(proj.max()),
        "story_alignment_mean": float(align.mean()),
        "story_alignment_std": float(align.std()),
    }
    if w_down is not None:
        cos = v @ (w_down / np.linalg.norm(w_down, axis=0))
        best = int(np.argmax(np.abs(cos)))
        out.update(best_neuron_idx=best, best_neuron_cosine=float(cos[best]))
    return out


SAME = 1 - 1e-6  # least cosine between two computations of the same maths (float16 files, float32 sums)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---- caches written straight through the storage API (no model: cheap, any size) ----------------------------

def random_cache(path: Path, metas: list[dict], lengths: list[int], *, width: int = 16, attn_heads: int = 2,
                 head_dim: int = 4, layers: tuple[int, ...] = (1, 3), seed: int = 0, concept_shift: float = 0.0,
                 hooks: tuple[str, ...] = ("resid_post", "attn_z")) -> Path:
    """A cache of random activations (one committed unit per 200 documents); positives of concept c get
    `concept_shift` added along a fixed random direction so that solvers have something to find."""
    from actcache.storage import CacheFingerprint, CacheWriter, CaptureSpec, DocRecord
    from actcache.storage.layout import activation_name

    rng = np.random.default_rng(seed)
    widths = {h: w for h, w in (("resid_post", width), ("attn_z", attn_heads * head_dim)) if h in hooks}
    fingerprint = CacheFingerprint(
        model={"architecture": "Random", "config": {"hidden_size": width}},
        tokenizer={"backend_sha256": "random"},
        dtype="float32",
        capture=CaptureSpec(hooks=tuple(widths), layers=layers, max_length=1 << 20),
        widths=widths,
        hook_attrs={"attn_z": {"n_heads": attn_heads, "head_dim": head_dim}} if "attn_z" in widths else {},
    )
    writer = CacheWriter.open(path, fingerprint)
    directions: dict[str, np.ndarray] = {}
    for start in range(0, len(metas), 200):
        docs = [DocRecord(f"doc{i:06d}", lengths[i], dict(metas[i], index=i))
                for i in range(start, min(start + 200, len(metas)))]
        total = sum(d.n_tokens for d in docs)
        segment = writer.begin_segment(f"unit{start}", docs, rng.integers(0, 100, total))
        seg_writer = writer.segment_writer(segment)
        for hook, w in widths.items():
            for layer in layers:
                rows = rng.standard_normal((total, w), dtype=np.float32)
                offset = 0
                for d in docs:
                    concept = d.meta.get("concept")
                    if concept is not None and concept_shift:
                        direction = directions.setdefault(f"{hook}/{concept}", rng.standard_normal(w, np.float32))
                        rows[offset:offset + d.n_tokens] += concept_shift * direction
                    offset += d.n_tokens
                for a in range(0, total, 1 << 14):
                    seg_writer.append(activation_name(hook, layer), rows[a:a + (1 << 14)])
        assert writer.commit(f"unit{start}", segment, docs, seg_writer.close())
    return path


def story_metas(n_concepts: int, per_concept: int, n_baselines: int) -> list[dict]:
    """Story-layout metadata: positives of concepts c0.. spread over scenarios s0.., then one baseline per
    scenario (so every concept has pairs for the aggregators)."""
    metas = [{"concept": f"c{k}", "role": "positive", "scenario": f"s{j % n_baselines}"}
             for k in range(n_concepts) for j in range(per_concept)]
    return metas + [{"role": "baseline", "scenario": f"s{j}"} for j in range(n_baselines)]
