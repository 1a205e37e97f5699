"""`actcache build` options and `actcache make-model`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .settings import BuildSettings

__all__ = ["add_build_arguments", "settings_from_args", "register"]


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = BuildSettings(model="", corpus="", out="")
    parser.add_argument("--model", required=True,
                        help="model folder (config.json + safetensors), a .gguf file, or a name in configs/models/")
    parser.add_argument("--corpus", required=True, help="story-layout folder, .jsonl file, or folder of .txt files")
    parser.add_argument("--out", required=True, help="cache folder (created, resumed or appended to)")
    parser.add_argument("--layers", default="all", help="decoder layers to capture: e.g. 8,15 or all")
    parser.add_argument("--hooks", default=",".join(defaults.hooks), help="resid_post, attn_z (comma-separated)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="documents per forward pass")
    parser.add_argument("--max-length", type=int, default=defaults.max_length,
                        help="tokens kept per document; longer documents are truncated and reported")
    parser.add_argument("--dtype", default=defaults.dtype, choices=["float32", "bfloat16", "float16"],
                        help="compute and storage dtype (stored losslessly)")
    parser.add_argument("--unit-tokens", type=int, default=defaults.unit_tokens,
                        help="tokens per commit unit: the most work a killed build redoes")
    parser.add_argument("--padding-side", default=defaults.padding_side, choices=["left", "right"])
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def settings_from_args(args: argparse.Namespace) -> BuildSettings:
    return BuildSettings(
        model=args.model, corpus=args.corpus, out=args.out, layers=args.layers,
        hooks=tuple(h.strip() for h in args.hooks.split(",") if h.strip()), batch_size=args.batch_size,
        max_length=args.max_length, dtype=args.dtype, unit_tokens=args.unit_tokens,
        padding_side=args.padding_side, progress=not args.no_progress,
    )


def register(subparsers: Any) -> None:
    make = subparsers.add_parser("make-model", help="write a registry model (tiny test models, SmolLM2) to a folder")
    make.add_argument("name", help="a name in configs/models/ of kind tiny or gguf")
    make.add_argument("--out", required=True, help="output folder (must not exist)")
    make.set_defaults(func=run_make_model)


def run_make_model(args: argparse.Namespace) -> int:
    from .make_model import make_model

    path = make_model(args.name, Path(args.out))
    print(f"wrote {args.name} to {path}")
    return 0
