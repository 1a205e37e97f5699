"""Benchmark: probe and neighbours from a SmolLM2 cache versus extracting the same taps by running the model
(what the seed systems do: a frozen-backbone forward per analysis).

    .venv/bin/python tests/bench/bench_analyses.py [--copies 8] [--layer 15] [--cache DIR]

Corpus: tests/data/sentiment.jsonl, each text repeated `--copies` times with a numbered prefix (distinct
documents). The cache is built once (not timed; pass --cache to reuse one). Timed, each as tokens per second of
the layer's taps: reading the layer from the cache (`iter_activations`), a transformers forward of every document
(float32, batches of 8 sorted by length, hidden states of the layer), the token-level probe command end to end
(moments, Newton passes, predictions), and the neighbours command (last-token pooling, train pool, test queries).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("ACTCACHE_HOME", str(REPO / ".cache" / "actcache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _corpus(path: Path, copies: int) -> Path:
    rows = [json.loads(line) for line in (REPO / "tests" / "data" / "sentiment.jsonl").read_text().splitlines()]
    with path.open("w") as out:
        for k in range(copies):
            for row in rows:
                out.write(json.dumps({**row, "text": f"Review {k}: {row['text']}"}) + "\n")
    return path


def _forward_tokens_per_s(model_dir: Path, ids: list, layer: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    start = time.perf_counter()
    with torch.inference_mode():
        for a in range(0, len(order), 8):
            batch = [ids[i] for i in order[a:a + 8]]
            width = max(len(x) for x in batch)
            tokens = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, x in enumerate(batch):
                tokens[r, :len(x)] = torch.as_tensor(x.astype("int64"))
                mask[r, :len(x)] = 1
            hidden = model(tokens, attention_mask=mask, output_hidden_states=True).hidden_states[layer + 1]
            _ = [hidden[r, :len(x)].numpy() for r, x in enumerate(batch)]  # the taps, as a seed system keeps them
    return sum(len(x) for x in ids) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--cache", type=Path)
    args = parser.parse_args()
    from actcache.cache_builder.build import BuildSettings, build_cache
    from actcache.cache_builder.model_source import resolve_model
    from actcache.solvers.analyses.neighbors import NeighborSettings, neighbors_cache
    from actcache.solvers.analyses.probe import ProbeSettings, probe_cache
    from actcache.storage import open_cache

    model_dir = resolve_model("smollm2-135m").path
    work = Path(tempfile.mkdtemp(prefix="bench-analyses-"))
    cache = args.cache
    if cache is None:
        cache = work / "cache"
        build_cache(BuildSettings(model=str(model_dir), corpus=_corpus(work / "sentiment.jsonl", args.copies),
                                  out=cache, layers=str(args.layer), batch_size=8, progress=False))
    reader = open_cache(cache)
    n_tokens = reader.n_tokens
    print(f"{reader.n_documents} documents, {n_tokens} tokens, layer {args.layer}")

    start = time.perf_counter()
    for _ in reader.iter_activations("resid_post", args.layer):
        pass
    print(f"read the layer from the cache:    {n_tokens / (time.perf_counter() - start):10.0f} tokens/s")
    ids = [reader.token_ids(d.key) for d in reader.documents()]
    print(f"transformers forward (the model): {_forward_tokens_per_s(model_dir, ids, args.layer):10.0f} tokens/s")
    start = time.perf_counter()
    probe_cache(cache, work / "probe", ProbeSettings(label_field="sentiment", positive="positive",
                                                     layers=str(args.layer), pooling="token"))
    took = time.perf_counter() - start
    print(f"probe --pooling token (end to end): {n_tokens / took:8.0f} tokens/s ({took:.1f} s)")
    start = time.perf_counter()
    neighbors_cache(cache, work / "neighbors", NeighborSettings(layer=args.layer, pool_where={"split": ["train"]},
                                                                query_where={"split": ["test"]}))
    took = time.perf_counter() - start
    print(f"neighbors (end to end):             {n_tokens / took:8.0f} tokens/s ({took:.1f} s)")


if __name__ == "__main__":
    main()
