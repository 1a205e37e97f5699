"""Helpers shared by the cluster tests: small-unit build settings and a full cache comparison."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from actcache.cache_builder.settings import BuildSettings
from actcache.storage import open_cache
from actcache.storage.backends import open_backend
from actcache.storage.snapshots import SnapshotLog


def settings_for(model: Path | str, corpus: Path, out: Path, **overrides: object) -> BuildSettings:
    """Small units and batches, so a build has many units and every stage sees many micro-batches."""
    fields: dict[str, object] = {"layers": "all", "unit_tokens": 512, "batch_size": 4, "progress": False}
    return BuildSettings(model=str(model), corpus=corpus, out=out, **{**fields, **overrides})  # type: ignore[arg-type]


def committed_documents(path: Path) -> list[str]:
    """Every document key of every commit record, repeats included (a duplicated document shows up twice)."""
    records = SnapshotLog(open_backend(path)).current().records
    return [d.key for record in records for d in record.documents]


def assert_same_cache(expected: Path, actual: Path) -> None:
    """Same documents (once each), same token ids and labels, and bit-identical float32 activations (int16 router
    expert ids) everywhere."""
    a, b = open_cache(expected), open_cache(actual)
    keys = committed_documents(actual)
    assert len(keys) == len(set(keys)), "a document was committed twice"
    assert sorted(keys) == sorted(d.key for d in a.documents())
    assert (a.hooks, a.layers) == (b.hooks, b.layers)
    for doc in a.documents():
        assert json.dumps(doc.meta, sort_keys=True) == json.dumps(b.document(doc.key).meta, sort_keys=True)
        np.testing.assert_array_equal(a.token_ids(doc.key), b.token_ids(doc.key))
    for hook in a.hooks:
        for layer in a.layers:  # streamed: each chunk of each cache is read once
            theirs = {doc.key: rows for doc, rows in b.iter_activations(hook, layer)}
            for doc, x in a.iter_activations(hook, layer):
                y = theirs[doc.key]
                assert x.dtype == y.dtype == (np.int16 if hook == "router_experts" else np.float32)
                assert np.array_equal(x, y), f"{hook} layer {layer} of {doc.key} differs: max {abs(x - y).max()}"


def make_fp8_checkpoint(src: Path, dst: Path, block: int = 16) -> Path:
    """Copy a float checkpoint as a fine-grained FP8 one, the layout of Qwen3-*-FP8 repos: every decoder-layer
    projection (experts one by one) stored as float8_e4m3fn `weight` + per-block float32 `weight_scale_inv`."""
    import torch
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    weight_map = {}
    for name in sorted(set(index["weight_map"].values())):
        out = {}
        for key, w in load_file(src / name).items():
            out[key] = w
            if ".layers." in key and key.endswith("_proj.weight"):
                rows, cols = w.shape
                blocks = w.reshape(rows // block, block, cols // block, block)
                scale = blocks.abs().amax(dim=(1, 3)) / torch.finfo(torch.float8_e4m3fn).max  # (rows/b, cols/b)
                out[key] = (blocks / scale[:, None, :, None]).reshape(rows, cols).to(torch.float8_e4m3fn)
                out[key.replace(".weight", ".weight_scale_inv")] = scale.float()
        save_file(out, dst / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(out, name))
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                                     "weight_block_size": [block, block]}
    (dst / "config.json").write_text(json.dumps(config))
    for path in src.glob("tokenizer*"):
        shutil.copy(path, dst / path.name)
    return dst


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run a reference build with one torch thread, as every stage runs here (`cpus_per_stage=1`): CPU matmul
    kernels split their reductions by thread count, so equal thread counts are what makes equal bits."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
