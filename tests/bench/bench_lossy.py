"""Benchmark: bytes per value and the quality gate of each lossy storage mode on SmolLM2, side by side in one run.

    .venv/bin/python tests/bench/bench_lossy.py [--modes bfloat16,fp8,int8] [--corpora demo,sentiment] [--keep DIR]

Builds the bundled demo corpus and the sentiment set (tests/data/sentiment.jsonl, a train/test split) with SmolLM2,
layers 8 and 15, hooks resid_post and attn_z, exact and in each mode (`build --store-as`), then gates each lossy
build against the exact one with `actcache compare`'s code (`compare_caches`: last-token pooling, caa, subspace,
ridge). Prints the README "Lossy storage" table: bytes per stored value (`activation_bytes_stored` over the values
held, and as a fraction of float32 raw), the min CAA cosine over concepts (and per layer), the max |AUROC delta|
(sentiment only: the demo corpus has no test split), the worst per-token rel. L2 error and cosine the builds
recorded (`info`), and each build's seconds. Issue 9's goal: fp8 <= 0.3x of float32 raw, CAA cosine >= 0.999,
|AUROC delta| <= 0.005.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

LAYERS = (8, 15)
SENTIMENT = REPO / "tests" / "data" / "sentiment.jsonl"


def _labels(corpus: str):
    from actcache.solvers.job_inputs import LabelSpec

    if corpus == "sentiment":
        return LabelSpec(label_field="sentiment", positive="positive", split_field="split")
    return LabelSpec()  # the demo's concepts, as `actcache compare` labels them by default


def _build(corpus: str, mode: str, out: Path) -> float:
    from actcache.cache_builder.build import BuildSettings, build_cache

    start = time.perf_counter()
    build_cache(BuildSettings(model="smollm2-135m", corpus="demo" if corpus == "demo" else SENTIMENT, out=out,
                              layers=",".join(map(str, LAYERS)), progress=False, store_as=mode,
                              lease_s=3600))  # a loaded machine must not lose the build's claims
    return time.perf_counter() - start


def _row(exact: Path, lossy: Path, corpus: str, seconds: float) -> dict:
    from actcache.solvers.compare import GateSettings, compare_caches
    from actcache.storage import open_cache

    info = open_cache(lossy).info()
    values = info["activation_bytes_raw"] / 4  # float32 compute: 4 bytes a value
    out = {"bytes_per_value": info["activation_bytes_stored"] / values, "seconds": seconds,
           "rel_l2_max": max((e["rel_l2_max"] for e in info["lossy_error"].values()), default=0.0),
           "cosine_min": min((e["cosine_min"] for e in info["lossy_error"].values()), default=1.0)}
    if exact == lossy:
        return {**out, "caa": 1.0, "by_layer": {layer: 1.0 for layer in LAYERS}, "auroc": 0.0}
    gate = compare_caches(exact, lossy, GateSettings(layers=",".join(map(str, LAYERS)), labels=_labels(corpus)))
    out["by_layer"] = {layer: min(r["caa_cosine"] for r in gate.rows if r["layer"] == layer) for layer in LAYERS}
    return {**out, "caa": gate.worst["caa_cosine_min"], "auroc": gate.worst["auroc_delta_max_abs"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="bfloat16,fp8,int8")
    parser.add_argument("--corpora", default="demo,sentiment")
    parser.add_argument("--keep", type=Path, help="build the caches here and keep them (default: a temporary folder)")
    args = parser.parse_args()
    corpora, modes = args.corpora.split(","), ["exact", *args.modes.split(",")]
    print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-lossy-") as scratch:
        root = args.keep or Path(scratch)
        rows: dict[tuple[str, str], dict] = {}
        for corpus in corpora:
            for mode in modes:
                out = root / f"{corpus}-{mode}"
                seconds = _build(corpus, mode, out)
                rows[(corpus, mode)] = _row(root / f"{corpus}-exact", out, corpus, seconds)
                print(f"{corpus} {mode}: {rows[(corpus, mode)]}", flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.1f}\n")
    head = "| mode |" + "".join(f" {c}: bytes/value (x float32 raw) | {c}: min CAA cosine (layer 8 / 15) |"
                                for c in corpora) + " sentiment: max AUROC delta | worst token rel. L2 / cosine |"
    print(head + "\n" + "|---" * head.count(" |") + "|")
    for mode in modes:
        cells = []
        for corpus in corpora:
            r = rows[(corpus, mode)]
            layers = " / ".join(f"{r['by_layer'][layer]:.5f}" for layer in LAYERS)
            cells += [f"{r['bytes_per_value']:.3f} ({r['bytes_per_value'] / 4:.3f}x)", f"{r['caa']:.5f} ({layers})"]
        auroc = rows.get(("sentiment", mode), {}).get("auroc")
        cells.append("-" if auroc is None else f"{auroc:.4f}")
        worst = [rows[(c, mode)] for c in corpora]
        cells.append(f"{max(r['rel_l2_max'] for r in worst):.4f} / {min(r['cosine_min'] for r in worst):.5f}")
        print(f"| {mode} | " + " | ".join(cells) + " |")
    print("\nbuild seconds: " + ", ".join(f"{c}/{m} {r['seconds']:.0f}" for (c, m), r in rows.items()))


if __name__ == "__main__":
    main()
