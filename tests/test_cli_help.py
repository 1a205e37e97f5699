"""`actcache --help` is cheap and complete: nothing heavy is imported, and every option shows its default."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

import pytest
from actcache.actcache_cli import build_parser

HEAVY = ("torch", "transformers", "zarr", "sklearn", "ray", "numpy", "scipy", "yaml", "tqdm", "safetensors")
LAZY_PACKAGES = ("actcache", "actcache.storage", "actcache.solvers")

_HELP_EVERYWHERE = f"""
import contextlib, io, json, sys
from actcache.actcache_cli import build_parser, main
parser = build_parser()
commands = parser._subparsers._group_actions[0].choices
with contextlib.redirect_stdout(io.StringIO()) as printed:
    for argv in [["--help"]] + [[name, "--help"] for name in commands]:
        try:
            main(argv)
        except SystemExit:
            pass
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
print(json.dumps({{"heavy": heavy, "printed": len(printed.getvalue()), "commands": len(commands)}}))
"""


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"actcache": parser, **action.choices}


def test_help_of_every_command_imports_nothing_heavy() -> None:
    """A fresh interpreter prints every command's help; then no heavy package may have been imported."""
    result = subprocess.run([sys.executable, "-c", _HELP_EVERYWHERE], capture_output=True, text=True, timeout=120,
                            check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["commands"] >= 9 and report["printed"] > 2000, report
    assert report["heavy"] == [], f"`actcache --help` imported {report['heavy']}: import them inside the command"


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_package_exports_are_lazy_and_complete(package: str) -> None:
    """Importing a package imports none of its heavy modules; every name in `__all__` still resolves."""
    code = (f"import importlib, sys; p = importlib.import_module({package!r}); "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    before = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert before.stdout.strip() == "[]", before.stdout
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None and name in dir(module), (package, name)
    with pytest.raises(AttributeError, match="no attribute 'open_cach'"):
        module.open_cach  # noqa: B018  (a typo is an AttributeError, not a lazy import of something else)


def _shown_default(action: argparse.Action) -> str:
    default = action.default
    return ",".join(map(str, default)) if isinstance(default, list | tuple) else str(default)


def test_every_option_with_a_default_shows_it() -> None:
    """Each option's rendered help line ends with "(default: X)", once; options without a default say nothing."""
    checked = 0
    for command, parser in _subcommands().items():
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            formatter = parser._get_formatter()
            formatter.add_argument(action)
            text = " ".join(formatter.format_help().split())
            default = action.default
            if any(default is v for v in (None, False, argparse.SUPPRESS)) or default in ((), []):
                continue  # nothing to show (a help text may still say in words what happens without the option)
            checked += 1
            assert f"(default: {_shown_default(action)})" in text, f"actcache {command}: {text}"
            assert text.lower().count("default") == 1, f"actcache {command} says its default twice: {text}"
    assert checked >= 25


@pytest.mark.parametrize(("argv", "expected"), [
    (["build", "--model", "m", "--corpus", "c", "--out", "o", "--layers", "-1"], "-1"),
    (["build", "--model", "m", "--corpus", "c", "--out", "o", "--layers", "-2,-1"], "-2,-1"),
    (["solve", "--cache", "c", "--out", "o", "--layers", "-3,8"], "-3,8"),
    (["sweep", "--cache", "c", "--out", "o", "--layers", "-1"], "-1"),
])
def test_negative_layer_lists_parse_as_values(argv: list[str], expected: str) -> None:
    assert build_parser().parse_args(argv).layers == expected
