"""Benchmark: K variants by rerunning SmolLM2 once per variant versus one cache build plus one sweep from the cache.

    .venv/bin/python tests/bench/bench_solvers.py [--layers 8,15] [--poolings last,mean]
        [--methods caa,pca,logistic,subspace] [--threads 1] [--bare-passes 8] [--reference-reruns]

Corpus: the bundled demo corpus (story layout, 12 concepts). The goal's baseline (issue 9): K reruns of the bare
forward pass alone (every fitted document through the full model, no hooks, no solve, the model already loaded);
`--bare-passes N` times N of them and scales the mean to K when N < K (0: none, the sweep side alone). The sweep is
timed twice: its own work in this process after imports (`sweep_cache`), and the whole `actcache sweep` command in a
fresh process (interpreter start and imports included). `--reference-reruns` adds the older, slower baseline: one
forward per variant feeding that variant's accumulators, then its solve (what the reference trainer did), with the
cosine of its vectors to the swept ones. Token ids come from the cache (tokenising is not timed). Peak memory is each
phase's RSS high-water mark above the process RSS when the phase starts (VmHWM, reset via /proc/self/clear_refs).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("ACTCACHE_HOME", str(REPO / ".cache" / "actcache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _status(field: str) -> int:
    return int(re.search(field + r":\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (the `actcache sweep` command)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Phase:
    """Wall time, CPU time (this process and finished children) and peak RSS above the RSS at the start of a phase.
    On a shared machine the CPU seconds are the figure to compare: wall time mostly measures the neighbours."""

    def __enter__(self) -> Phase:
        self.rss = _status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        self.start, self.start_cpu = time.perf_counter(), _cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds, self.cpu = time.perf_counter() - self.start, _cpu_seconds() - self.start_cpu
        self.peak = _status("VmHWM") - self.rss


def rerun_variant(model, token_ids, labels, layers, width, pooling, method) -> dict:
    """One variant the reference way: forward every fitted document through the full model, then solve."""
    import torch
    from actcache.solvers import LayerPass, PassPlan
    from actcache.solvers.executor import LocalExecutor
    from actcache.solvers.layer_solve import layer_vectors
    from actcache.solvers.subspace import subspace_eigen

    plan = PassPlan((pooling,), pairs=method not in ("caa", "subspace"),
                    subspace_concepts=tuple(range(len(labels.concepts))) if method == "subspace" else None)
    passes = {layer: LayerPass(labels, width, plan) for layer in layers}
    seen: dict[int, torch.Tensor] = {}
    hooks = [model.model.layers[i].register_forward_hook(
        lambda _m, _a, out, i=i: seen.__setitem__(i, out[0] if isinstance(out, tuple) else out)) for i in layers]
    try:
        for i, ids in enumerate(token_ids):
            if not labels.fit[i]:
                continue
            with torch.inference_mode():
                model(torch.as_tensor(ids, dtype=torch.long)[None])
            for layer in layers:
                passes[layer].feed(i, seen[layer][0])
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for layer, lp in passes.items():
        stats = lp.finish()
        eigens = None
        if method == "subspace":
            total, n = stats.projectors.total()
            eigens = {c: subspace_eigen(total, n, *stats.projectors.concept_total(c))
                      for c in range(len(labels.concepts))}
        out[layer] = layer_vectors(labels, stats, (pooling,), (method,), eigens, LocalExecutor())
    return out


def bare_forward(model, token_ids, labels) -> None:
    """One forward pass of every fitted document through the full model: no hooks, nothing kept."""
    import torch

    with torch.inference_mode():
        for i, ids in enumerate(token_ids):
            if labels.fit[i]:
                model(torch.as_tensor(ids, dtype=torch.long)[None])


def sweep_command(cache: Path, out: Path, args: argparse.Namespace) -> Phase:
    """The whole `actcache sweep` command in a fresh process (start-up and imports included)."""
    command = [str(Path(sys.executable).with_name("actcache")), "sweep", "--cache", str(cache), "--out", str(out),
               "--layers", args.layers, "--poolings", args.poolings, "--methods", args.methods,
               "--threads", str(args.threads)]
    with Phase() as phase:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return phase


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", default="8,15")
    parser.add_argument("--poolings", default="last,mean")
    parser.add_argument("--methods", default="caa,pca,logistic,subspace")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for every phase (default 1)")
    parser.add_argument("--bare-passes", type=int, default=None,
                        help="bare forward passes to time (default: K; 0: time the sweep side alone)")
    parser.add_argument("--reference-reruns", action="store_true",
                        help="also rerun the model once per variant with its solve (slow: ~1 min per variant)")
    args = parser.parse_args()

    import torch
    from actcache.cache_builder.build import BuildSettings, build_cache
    from actcache.cache_builder.corpus import DEMO_CORPUS
    from actcache.cache_builder.model_source import resolve_model
    from actcache.solvers import parse_pooling, read_readout, story_labels
    from actcache.solvers.sweep import SweepSettings, sweep_cache, variant_name
    from actcache.storage import open_cache
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    layers = [int(x) for x in args.layers.split(",")]
    poolings, methods = args.poolings.split(","), args.methods.split(",")
    model_dir = resolve_model("smollm2-135m").path
    work = Path(tempfile.mkdtemp(prefix="bench-solvers-"))

    with Phase() as build:
        build_cache(BuildSettings(model="smollm2-135m", corpus=DEMO_CORPUS, out=work / "cache", layers=args.layers,
                                  progress=False))
    with Phase() as sweep:
        result = sweep_cache(work / "cache", work / "sweep", SweepSettings(
            poolings=tuple(poolings), methods=tuple(methods), layers=args.layers, threads=args.threads))
    command = sweep_command(work / "cache", work / "sweep-command", args)

    reader = open_cache(work / "cache")
    docs = reader.documents()
    labels = story_labels(docs)
    token_ids = [reader.token_ids(d.key).astype("int64") for d in docs]
    width = reader.width("resid_post")
    k = len(poolings) * len(methods)
    passes = k if args.bare_passes is None else args.bare_passes
    if passes or args.reference_reruns:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    bare = []
    for _ in range(passes):
        with Phase() as one:
            bare_forward(model, token_ids, labels)
        bare.append(one)
        print(f"bare forward pass: {one.seconds:.1f} s ({one.cpu:.1f} CPU s)", flush=True)
    reruns = []
    for p, m in ((p, m) for p in poolings for m in methods if args.reference_reruns):
        with Phase() as rerun:
            vectors = rerun_variant(model, token_ids, labels, layers, width, parse_pooling(p), m)
        swept = read_readout(work / "sweep" / "variants" / variant_name(m, p)).vectors
        agree = min(float((vectors[layer][(str(parse_pooling(p)), m)] * swept[layer]).sum(dim=1).min())
                    for layer in layers)
        reruns.append((f"{m}__{p}", rerun, agree))
        print(f"rerun {m}__{p}: {rerun.seconds:.1f} s, min cosine to the swept vectors {agree:.4f}", flush=True)

    tokens = sum(d.n_tokens for d in docs)
    rows = [
        ("documents / tokens / concepts", f"{len(docs)} / {tokens} / {len(labels.concepts)}"),
        ("layers, variants K", f"{args.layers}; K = {k} ({', '.join(f'{m}__{p}' for p in poolings for m in methods)})"),
        ("torch threads", str(args.threads)),
        ("cache build (once): wall / CPU", f"{build.seconds:.1f} / {build.cpu:.1f} s"),
        ("sweep's own work, in process after imports (all K): wall / CPU", f"{sweep.seconds:.1f} / {sweep.cpu:.1f} s"),
        ("whole `actcache sweep` command (all K): wall / CPU", f"{command.seconds:.1f} / {command.cpu:.1f} s"),
        ("peak RSS above start: build / sweep", f"{build.peak / 2**20:.0f} / {sweep.peak / 2**20:.0f} MiB"),
        ("cache on disk", f"{open_cache(work / 'cache').info()['bytes_on_disk'] / 2**20:.1f} MiB"),
    ]
    if bare:  # the baseline and the ratios the issue asks for (none with --bare-passes 0)
        bare_k, bare_k_cpu = (sum(getattr(b, field) for b in bare) / len(bare) * k for field in ("seconds", "cpu"))
        scaled = f" ({len(bare)} timed, mean x {k})" if len(bare) < k else ""
        rows[3:3] = [("bare forward pass of the fitted documents, K reruns: wall / CPU",
                      f"{bare_k:.1f} / {bare_k_cpu:.1f} s{scaled}")]
        rows[7:7] = [
            ("speed-up: K bare reruns / sweep's own work (goal >= 100x): wall / CPU",
             f"{bare_k / sweep.seconds:.1f}x / {bare_k_cpu / sweep.cpu:.1f}x"),
            ("speed-up: K bare reruns / whole command (goal >= 40x): wall / CPU",
             f"{bare_k / command.seconds:.1f}x / {bare_k_cpu / command.cpu:.1f}x"),
            ("speed-up: K bare reruns / (build + sweep): wall / CPU",
             f"{bare_k / (build.seconds + sweep.seconds):.1f}x / {bare_k_cpu / (build.cpu + sweep.cpu):.1f}x"),
        ]
    if reruns:
        total_rerun = sum(r.seconds for _, r, _ in reruns)
        rows += [
            ("reference: rerun + solve per variant (total, K reruns)", f"{total_rerun:.1f} s"),
            ("reference: speed-up reruns / sweep", f"{total_rerun / sweep.seconds:.1f}x"),
            ("reference: peak RSS of one rerun (max)", f"{max(r.peak for _, r, _ in reruns) / 2**20:.0f} MiB"),
            ("reference: min cosine rerun vs swept vectors", f"{min(a for _, _, a in reruns):.4f}"),
        ]
    print("\n| measure | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows))
    print(f"\n(sweep wrote {len(result.variants)} readouts to {work / 'sweep'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
