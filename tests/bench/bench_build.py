"""Build throughput on SmolLM2-135M against a bare forward over the same batches, in one run.

    .venv/bin/python tests/bench/bench_build.py [--copies 2] [--batch-size 8]

Prints tokens/s of: the bare transformers forward (all 30 layers, no hooks, same padded batches), a build that
captures 3 layers (both hooks), and a build that captures all 30 layers (both hooks); their ratios to the bare
forward; bytes per stored value, the lossless compression ratio and the compressed write rate; then the ratios the
planner assumes (cluster/volume.py), which must be these measurements (tests/cluster/test_planner.py checks the
README's table against them).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from actcache.cache_builder.build import build_cache
from actcache.cache_builder.corpus import DEMO_CORPUS, load_corpus
from actcache.cache_builder.model_source import load_model, load_tokenizer, resolve_model
from actcache.cache_builder.planning import plan_units, tokenize_documents
from actcache.cache_builder.runner import pad_batch
from actcache.cache_builder.settings import BuildSettings
from actcache.storage import open_cache


def write_bench_corpus(folder: Path, copies: int) -> Path:
    """The demo corpus retold `copies` times with its sentences rotated: >= 20k SmolLM2 tokens.

    Rotation (not a shared prefix such as "Telling 2.") keeps every retelling's token rows distinct: a causal model
    gives identical rows for identical prefixes, which would flatter the compression ratio.
    """
    path = folder / "bench.jsonl"
    with path.open("w") as handle:
        for copy in range(copies):
            for doc in load_corpus(DEMO_CORPUS):
                sentences = re.split(r"(?<=[.!?])\s+", doc.text)
                turn = copy % len(sentences)
                text = " ".join(sentences[turn:] + sentences[:turn])
                handle.write(json.dumps({"text": text, "concept": doc.meta.get("concept")}) + "\n")
    return path


def bare_forward_tok_s(model_name: str, corpus: Path, batch_size: int, max_length: int) -> tuple[float, int]:
    """Plain `model.model(ids, mask)` over the builder's own batches: the cost of running the backbone at all."""
    resolved = resolve_model(model_name)
    tokenizer = load_tokenizer(resolved)
    model = load_model(resolved)
    docs = load_corpus(corpus)
    tokenized = tokenize_documents([d.text for d in docs], [d.meta for d in docs], tokenizer,
                                   tokenizer_digest="bench", max_length=max_length)
    batches = [b for u in plan_units(tokenized, unit_tokens=8192, batch_size=batch_size) for b in u.batches()]
    tokens = sum(d.n_tokens for b in batches for d in b)
    with torch.inference_mode():
        for _ in range(2):  # warm the kernels (the builds are timed after their model load, warm too)
            model.model(*pad_batch([d.ids for d in batches[0]], tokenizer.eos_token_id or 0))
        started = time.perf_counter()
        for batch in batches:
            ids, mask = pad_batch([d.ids for d in batch], tokenizer.eos_token_id or 0)
            model.model(input_ids=ids, attention_mask=mask)
    return tokens / (time.perf_counter() - started), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; each row reports its best")
    args = parser.parse_args()
    runs = (("build, 3 layers (8,15,22), both hooks", "8,15,22", "float32"),
            ("build, all 30 layers, both hooks", "all", "float32"),
            ("build, 3 layers, bfloat16 compute+store", "8,15,22", "bfloat16"))
    best: dict[str, tuple[float, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="actcache-bench-") as tmp:
        corpus = write_bench_corpus(Path(tmp), args.copies)
        for round_index in range(args.rounds):
            bare_rate, tokens = bare_forward_tok_s(args.model, corpus, args.batch_size, args.max_length)
            best["bare"] = max(best.get("bare", (0.0, None)), (bare_rate, None), key=lambda r: r[0])
            for label, layers, dtype in runs:
                out = Path(tmp) / f"cache-{round_index}-{layers.replace(',', '-')}-{dtype}"
                report = build_cache(BuildSettings(model=args.model, corpus=corpus, out=out, layers=layers,
                                                   batch_size=args.batch_size, max_length=args.max_length,
                                                   dtype=dtype, progress=False))
                rate = report.built_tokens / report.seconds
                if rate > best.get(label, (0.0, None))[0]:
                    best[label] = (rate, (report, open_cache(out).info()))
    bare = best["bare"][0]
    rows = [("bare forward, 30 layers, no hooks", bare, None)] + [(label, *best[label]) for label, _, _ in runs]
    print(f"SmolLM2-135M build benchmark: {tokens} tokens, batch {args.batch_size}, "
          f"{torch.get_num_threads()} torch threads, best of {args.rounds} interleaved rounds")
    print(f"{'run':<42}{'tok/s':>9}{'x bare':>8}{'B/value':>9}{'stored/raw':>11}{'ratio':>7}{'write MB/s':>12}")
    for label, rate, extra in rows:
        if extra is None:
            print(f"{label:<42}{rate:>9.0f}{1.0:>8.2f}")
            continue
        report, info = extra
        values = info["activation_bytes_raw"] / (2 if info["dtype"] == "bfloat16" else 4)
        stored = info["activation_bytes_stored"]
        print(f"{label:<42}{rate:>9.0f}{rate / bare:>8.2f}{stored / values:>9.2f}"
              f"{stored / info['activation_bytes_raw']:>11.3f}{info['compression_ratio']:>7.2f}"
              f"{stored / report.seconds / 1e6:>12.1f}")
    from actcache.cluster.volume import compression_ratio

    print(f"planner's ratios (cluster/volume.py): float32 {compression_ratio('float32'):.2f}, bfloat16 "
          f"{compression_ratio('bfloat16'):.2f}; set them to the measured ones above when they differ")


if __name__ == "__main__":
    main()
