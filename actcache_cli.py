"""The `actcache` command: one small module above storage/, cache_builder/, cluster/ and solvers/."""

from __future__ import annotations

import argparse
import os
import re
import sys
import textwrap
import traceback
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser"]

# commands that read one cache (`args.cache`): each takes `--tag NAME` to read a pinned state
_READING_COMMANDS = frozenset({"info", "stats", "solve", "sweep", "score", "probe", "neighbors", "geometry",
                               "logit-lens"})
_DEBUG_HELP = "show the traceback of every error, input errors included (also ACTCACHE_DEBUG=1)"


class _DefaultsFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, so nobody has to read the code to learn it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        default = action.default
        if not action.option_strings or any(default is v for v in (None, False, argparse.SUPPRESS)) \
                or default in ((), []) or "%(default)" in help_text:
            return help_text  # nothing to show: an option without a value (its help may say what happens then)
        shown = ",".join(map(str, default)) if isinstance(default, list | tuple) else str(default)
        return f"{help_text} (default: {shown.replace('%', '%%')})"  # help strings are %-formatted by argparse

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)  # `mean-skip:1` stays whole


class _Parser(argparse.ArgumentParser):
    """The command line's parser (its subcommands' too): defaults in --help, negative layer lists as values."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)
        # Python 3.13's rule, which 3.11 and 3.12 lack: `--layers -2,-1` is a value (as `--layers -1` already is),
        # not an unknown option; no actcache option looks like a negative number.
        self._negative_number_matcher = re.compile(r"-\.?\d")


def build_parser() -> argparse.ArgumentParser:
    from actcache.cache_builder import cli as builder_cli
    from actcache.cluster import cli as cluster_cli
    from actcache.solvers import cli as solvers_cli
    from actcache.storage import cli as storage_cli

    parser = _Parser(prog="actcache", description=__doc__)
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="capture activations of a corpus into a cache (resumable, appendable)")
    builder_cli.add_build_arguments(build)
    cluster_cli.add_pipeline_arguments(build)
    build.set_defaults(func=_run_build)

    demo = sub.add_parser("demo", help="build the bundled demo corpus with SmolLM2, solve it, show the readout")
    demo.add_argument("--out", default="actcache-demo", help="output folder, relative to the current folder")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(func=_run_demo)

    builder_cli.register(sub)
    storage_cli.register(sub)
    cluster_cli.register(sub)
    solvers_cli.register(sub)
    for name, command in sub.choices.items():  # `actcache build ... --debug` as well as `actcache --debug build ...`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
        if name in _READING_COMMANDS:
            command.add_argument("--tag", help="read the cache exactly as `actcache tag` pinned it under this name")
    return parser


def _run_build(args: argparse.Namespace) -> int:
    from actcache.cache_builder import cli as builder_cli
    from actcache.cache_builder.build import build_cache

    settings = builder_cli.settings_from_args(args)
    if args.stages is None and args.replicas == 1 and args.address is None:
        report = build_cache(settings)
    else:
        from actcache.cluster.pipeline import build_distributed

        stages = 1 if args.stages is None else args.stages  # `--stages 0` is refused, not read as 1
        report = build_distributed(settings, stages=stages, replicas=args.replicas, address=args.address)
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
    """Run one command: exit 0, 2 with one line for the user's input errors, 1 with a traceback for our bugs."""
    from actcache.storage.errors import InputError

    args = build_parser().parse_args(argv)
    if getattr(args, "tag", None) is not None and hasattr(args, "cache"):
        from actcache.storage.cache_ref import CacheRef

        args.cache = CacheRef(args.cache, args.tag)
    debug = args.debug or os.environ.get("ACTCACHE_DEBUG", "") not in ("", "0")
    try:
        return int(args.func(args))
    except InputError as error:  # the user's input, not our bug: one line that names the fix
        if debug:
            traceback.print_exc()
        print(f"actcache: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("actcache: interrupted; committed work is kept, rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception:  # anything else is a bug in actcache: the traceback is what a report needs
        traceback.print_exc()
        print("actcache: internal error (a bug, not your input): please report it with the traceback above",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
