"""`actcache serve` under 8 concurrent clients against one local build of the same union, and request latency.

    .venv/bin/python tests/bench/bench_service.py [--model smollm2-135m] [--copies 1] [--clients 8]

The bench corpus (tests/bench/bench_build.py's) is split into 8 overlapping slices, one per client; each client
POSTs its slice over real HTTP and polls its job to the end. Throughput is the union's tokens over the wall time
from the first POST to the last job done, against a local `build_cache` of the union with the model already
loaded (both exclude the model load, which the service pays once). Latency is from a POST to the first poll that
shows computed tokens (`progress.tokens_done > 0`), on an idle service and under the 8 clients.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from actcache.cache_builder.build import build_cache
from actcache.cache_builder.model_source import load_model, resolve_model
from actcache.cache_builder.settings import BuildSettings
from actcache.cluster.service.users import add_user

sys.path.insert(0, str(Path(__file__).parent))
from bench_build import write_bench_corpus  # noqa: E402

_CLI = "from actcache.actcache_cli import main; raise SystemExit(main())"
_POLL_IDLE_S = 0.01  # the latency of one job on an idle service, polled finely
_POLL_BUSY_S = 0.25  # 8 clients polling as finely would take the CPU the forward passes need


def _http(url: str, token: str, body: bytes | None = None) -> dict[str, Any]:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"})
    with urllib.request.urlopen(request, timeout=600) as answer:
        result: dict[str, Any] = json.loads(answer.read())
        return result


def _run_job(url: str, token: str, name: str, body: bytes, poll_s: float) -> dict[str, Any]:
    """POST and poll to the end; adds `first_progress_s` (POST -> first poll with computed tokens)."""
    posted = time.perf_counter()
    record = _http(f"{url}/v1/jobs?name={name}", token, body)
    first = None
    while record["state"] not in ("done", "failed"):
        time.sleep(poll_s)
        record = _http(f"{url}/v1/jobs/{record['id']}", token)
        if first is None and record["progress"].get("tokens_done", 0) > 0:
            first = time.perf_counter() - posted
    if record["state"] != "done":
        raise SystemExit(f"job {name} failed: {record['error']}")
    return {**record, "first_progress_s": first, "wall_s": time.perf_counter() - posted}


def _slices(lines: list[str], clients: int) -> list[list[str]]:
    """`clients` contiguous slices that overlap their neighbours by a quarter slice; together, every line."""
    step = len(lines) / clients
    overlap = int(step / 4)
    return [lines[max(0, int(i * step) - overlap):int((i + 1) * step) + overlap] for i in range(clients)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--copies", type=int, default=1, help="retellings of the demo corpus (1: ~10k tokens)")
    parser.add_argument("--documents", type=int, default=None, help="use only the first N documents")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--layers", default="8,15,22")
    parser.add_argument("--unit-tokens", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    capture = {"layers": args.layers, "hooks": "resid_post", "unit-tokens": str(args.unit_tokens),
               "batch-size": str(args.batch_size)}
    with tempfile.TemporaryDirectory(prefix="actcache-bench-service-") as tmp:
        root = Path(tmp)
        corpus = write_bench_corpus(root, args.copies)
        lines = corpus.read_text().splitlines(keepends=True)[:args.documents]
        corpus.write_text("".join(lines))

        settings = BuildSettings(model=args.model, corpus=corpus, out=root / "local", layers=args.layers,
                                 hooks=("resid_post",), batch_size=args.batch_size, unit_tokens=args.unit_tokens,
                                 device="cpu", progress=False)
        model = load_model(resolve_model(args.model), settings.dtype, "cpu")
        started = time.perf_counter()
        local = build_cache(settings, model)
        local_s = time.perf_counter() - started
        print(f"local build: {local.built_tokens} tokens in {local_s:.1f} s", file=sys.stderr, flush=True)
        del model

        users = root / "users.yaml"
        tokens = [add_user(users, f"user{i}", ("submit", "read")) for i in range(args.clients)]
        argv = [sys.executable, "-c", _CLI, "serve", "--model", args.model, "--cache", str(root / "served"),
                "--users", str(users), "--port", "0", "--device", "cpu",
                *[a for k, v in capture.items() for a in (f"--{k}", v)]]
        service = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert service.stdout is not None
            url = service.stdout.readline().strip()
            idle = _run_job(url, tokens[0], "idle", json.dumps({"text": "A warm-up request, alone."}).encode(),
                            _POLL_IDLE_S)
            results: list[dict[str, Any]] = []
            threads = [threading.Thread(target=lambda i=i, part=part: results.append(
                _run_job(url, tokens[i], f"client{i}", "".join(part).encode(), _POLL_BUSY_S)))
                for i, part in enumerate(_slices(lines, args.clients))]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            served_s = time.perf_counter() - started
        finally:
            service.kill()
            service.wait()

    computed = sum(r["tokens"] for r in results)
    sent = sum(len(part) for part in _slices(lines, args.clients))
    firsts = [r["first_progress_s"] for r in results if r["first_progress_s"] is not None]
    print(f"actcache serve vs a local build: {args.model}, {local.built_tokens} tokens in {len(lines)} documents "
          f"(the union of {args.clients} clients' {sent} documents), layers {args.layers}, resid_post, "
          f"unit {args.unit_tokens} tokens, batch {args.batch_size}")
    print(f"{'run':<38}{'wall s':>8}{'tok/s':>9}{'x local':>9}")
    print(f"{'local build of the union':<38}{local_s:>8.1f}{local.built_tokens / local_s:>9.0f}{1.0:>9.2f}")
    print(f"{f'service, {args.clients} concurrent clients':<38}{served_s:>8.1f}{computed / served_s:>9.0f}"
          f"{local_s / served_s:>9.2f}")
    print(f"tokens computed by the service: {computed} (the union: {local.built_tokens}); documents reused across "
          f"jobs: {sum(r['reused_documents'] for r in results)}")
    print(f"POST -> first progress update (computed tokens): idle {idle['first_progress_s'] or 0:.3f} s (polled every "
          f"{_POLL_IDLE_S} s); under {args.clients} clients median {statistics.median(firsts):.2f} s, max "
          f"{max(firsts):.2f} s (polled every {_POLL_BUSY_S} s; {len(firsts)} jobs computed tokens)")


if __name__ == "__main__":
    main()
