"""`actcache build` options and `actcache make-model`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from actcache.storage.devices import DEVICE_HELP
from actcache.storage.hook_points import HOOKS_HELP
from actcache.storage.store_modes import STORE_AS_HELP, STORE_MODES

from .settings import BuildSettings

__all__ = ["add_build_arguments", "settings_from_args", "register"]


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = BuildSettings(model="", corpus="", out="")
    parser.add_argument("--model", required=True,
                        help="model folder (config.json + safetensors), a .gguf file, or a name in configs/models/")
    parser.add_argument("--corpus", required=True,
                        help="story-layout folder, .jsonl file, folder of .txt files, or demo (the bundled corpus)")
    parser.add_argument("--out", required=True, help="cache folder (created, resumed or appended to)")
    parser.add_argument("--layers", default="all", help="decoder layers to capture: e.g. 8,15, -1 (the last) or all")
    parser.add_argument("--hooks", default=",".join(defaults.hooks), help=HOOKS_HELP)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="documents per forward pass")
    parser.add_argument("--max-length", type=int, default=defaults.max_length,
                        help="tokens kept per document; longer documents are truncated and reported")
    parser.add_argument("--dtype", default=defaults.dtype, choices=["float32", "bfloat16", "float16"],
                        help="compute dtype (stored losslessly unless --store-as says otherwise)")
    parser.add_argument("--store-as", default=defaults.store_as, choices=STORE_MODES, help=STORE_AS_HELP)
    parser.add_argument("--device", default=defaults.device,
                        help=f"where the single-process build runs the model: {DEVICE_HELP} (a Ray pipeline "
                             f"gives each stage its own GPU instead)")
    parser.add_argument("--unit-tokens", type=int, default=defaults.unit_tokens,
                        help="tokens per commit unit: the most work a killed build redoes")
    parser.add_argument("--padding-side", default=defaults.padding_side, choices=["left", "right"],
                        help="where a batch pads shorter documents (padding is never stored)")
    parser.add_argument("--lease-seconds", type=float, default=defaults.lease_s,
                        help="how long this writer's claims (segments, document buckets) outlive it: another writer "
                             "on the same cache takes a killed writer's documents over after this")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--no-text", action="store_true",
                        help="do not store the documents' texts in the cache (a private corpus); cache.text() and "
                             "score then have no text to show")


def settings_from_args(args: argparse.Namespace) -> BuildSettings:
    return BuildSettings(
        model=args.model, corpus=args.corpus, out=args.out, layers=args.layers,
        hooks=tuple(h.strip() for h in args.hooks.split(",") if h.strip()), batch_size=args.batch_size,
        max_length=args.max_length, dtype=args.dtype, device=args.device, unit_tokens=args.unit_tokens,
        padding_side=args.padding_side, progress=not args.no_progress, store_text=not args.no_text,
        store_as=args.store_as, lease_s=args.lease_seconds,
    )


def register(subparsers: Any) -> None:
    make = subparsers.add_parser("make-model", help="write a registry model (tiny test models, SmolLM2) to a folder")
    make.add_argument("name", help="a name in configs/models/ of kind tiny or gguf")
    make.add_argument("--out", required=True, help="output folder (must not exist)")
    make.set_defaults(func=run_make_model)
    label = subparsers.add_parser("label", help="replace a cache's labels with a corpus's, without recomputing "
                                                "(a new annotation version; older ones stay readable)")
    label.add_argument("cache", help="cache folder")
    label.add_argument("--from", dest="corpus", required=True, metavar="CORPUS",
                       help="corpus with the new labels: .jsonl file, story-layout folder or folder of .txt files")
    label.set_defaults(func=run_label)


def run_make_model(args: argparse.Namespace) -> int:
    from .make_model import make_model

    path = make_model(args.name, Path(args.out))
    print(f"wrote {args.name} to {path}")
    return 0


def run_label(args: argparse.Namespace) -> int:
    from .labelling import label_cache

    result = label_cache(args.cache, args.corpus)
    where = f" (labels version {result.version})" if result.version is not None else ""
    lines = [f"relabelled {result.relabelled} documents{where}"]
    if result.not_cached:
        lines.append(f"{result.not_cached} corpus document(s) are not in the cache: build them to add them")
    print("\n".join(lines))
    return 0
