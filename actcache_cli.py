"""The `actcache` command: one small module above storage/, cache_builder/, cluster/ and solvers/."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]



def build_parser() -> argparse.ArgumentParser:
    from actcache.cache_builder import cli as builder_cli
    from actcache.cluster import cli as cluster_cli
    from actcache.solvers import cli as solvers_cli
    from actcache.storage import cli as storage_cli

    parser = argparse.ArgumentParser(prog="actcache", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="capture activations of a corpus into a cache (resumable, appendable)")
    builder_cli.add_build_arguments(build)
    cluster_cli.add_pipeline_arguments(build)
    build.set_defaults(func=_run_build)

    demo = sub.add_parser("demo", help="build the bundled demo corpus with SmolLM2, solve it, show the readout")
    demo.add_argument("--out", default="actcache-demo", help="output folder (default: ./actcache-demo)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(func=_run_demo)

    builder_cli.register(sub)
    storage_cli.register(sub)
    cluster_cli.register(sub)
    solvers_cli.register(sub)
    return parser


def _run_build(args: argparse.Namespace) -> int:
    from actcache.cache_builder import cli as builder_cli
    from actcache.cache_builder.build import build_cache

    settings = builder_cli.settings_from_args(args)
    if args.stages is None and args.replicas == 1 and args.address is None:
        report = build_cache(settings)
    else:
        from actcache.cluster.pipeline import build_distributed

        report = build_distributed(settings, stages=args.stages or 1, replicas=args.replicas, address=args.address)
    print(report.summary(args.out))
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    import shutil

    from actcache.cache_builder.build import build_cache
    from actcache.cache_builder.corpus import DEMO_CORPUS
    from actcache.cache_builder.settings import BuildSettings
    from actcache.solvers import SolveSettings, solve_cache
    from actcache.storage import open_cache
    from actcache.storage.cli import format_info

    out = Path(args.out)
    settings = BuildSettings(model="smollm2-135m", corpus=DEMO_CORPUS, out=out / "cache", layers="8,15,22",
                             progress=not args.no_progress)
    report = build_cache(settings)  # a rerun reuses every cached document
    print(report.summary(settings.out))
    print(format_info(open_cache(settings.out).info()))
    readout = out / "readout"
    if (readout / "readout.json").is_file():  # the demo's own previous readout: replace it
        shutil.rmtree(readout)
    print(solve_cache(settings.out, readout, SolveSettings(methods=("all",))).summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    from actcache.storage.errors import InputError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except InputError as error:  # the user's input, not our bug: one line (--debug/ACTCACHE_DEBUG=1 adds the trace)
        print(f"actcache: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("actcache: interrupted; committed work is kept, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
