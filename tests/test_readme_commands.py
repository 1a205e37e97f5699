"""Every command README.md shows runs as pasted, from a folder outside the checkout, with the installed `actcache`.

The commands are read from README.md itself (every `actcache` invocation in its bash blocks, in order, and every
python block), so a command added to the README is tested without touching this file. Substitutions, all here:
- `$A` and `.venv/bin/actcache` are the installed console script beside this interpreter;
- a bracketed argument (`[--address HOST:PORT]`) is optional syntax and is left out;
- an argument `...` stands for the arguments of the README's previous command of the same kind: the Ray line
  `build ... --stages 3 --replicas 2` resumes the cache the first build made (every document reused, so no stage
  starts: tests/cluster runs the pipeline itself);
- files a reader is assumed to have (`README_INPUTS`) are written into the folder first.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from actcache.actcache_cli import build_parser

README = Path(__file__).resolve().parent.parent / "README.md"
ACTCACHE = Path(sys.executable).parent / "actcache"
CHECKOUT_RELATIVE = re.compile(r"^(\.venv|cache_builder|configs|storage|solvers|cluster|tests)/")


@dataclass(frozen=True)
class Step:
    """One README command: `args` of `actcache`, or a python block's `code`."""

    line: str
    args: tuple[str, ...] = ()
    code: str | None = None

    def argv(self) -> list[str]:
        return [sys.executable, "-c", self.code] if self.code is not None else [str(ACTCACHE), *self.args]


def readme_steps(text: str) -> Iterator[Step]:
    """The README's commands in order, with the substitutions of this module's docstring applied."""
    previous: dict[str, tuple[str, ...]] = {}
    for language, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        if language == "python":
            yield Step(body.strip().splitlines()[0], code=body)
        if language != "bash":
            continue
        for line in body.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if not words or words[0] not in ("$A", ".venv/bin/actcache", "actcache"):
                    continue
                args = _without_optional(words[1:])
                if "..." in args:
                    at = args.index("...")
                    args = [*args[:at], *previous[args[0]][1:], *args[at + 1:]]
                previous[args[0]] = tuple(args)
                yield Step(" ".join(part.split()), args=tuple(args))


def _without_optional(words: list[str]) -> list[str]:
    kept, depth = [], 0
    for word in words:
        depth += word.count("[")
        if depth == 0:
            kept.append(word)
        depth -= word.count("]")
    return kept


def readme_inputs(folder: Path) -> None:
    """README_INPUTS: files the README assumes its reader has, written into `folder`."""
    from actcache.cache_builder.corpus import DEMO_CORPUS, load_corpus

    loader_fields = ("source", "index")  # set by the corpus loader, not labels a corpus may carry
    relabelled = [{"text": d.text, **{k: v for k, v in d.meta.items() if k not in loader_fields}, "reviewed": "yes"}
                  for d in load_corpus(DEMO_CORPUS)]
    (folder / "relabelled.jsonl").write_text("".join(json.dumps(row) + "\n" for row in relabelled))


STEPS = list(readme_steps(README.read_text(encoding="utf-8")))


def test_the_readme_commands_are_found() -> None:
    commands = [s.args[0] for s in STEPS if s.code is None]
    for expected in ("demo", "build", "info", "verify", "plan", "make-model", "solve", "sweep", "gc"):
        assert expected in commands, f"README's `actcache {expected}` was not found in its bash blocks"
    assert any("--stages" in s.args for s in STEPS) and any(s.code for s in STEPS)


@pytest.mark.parametrize("step", [s for s in STEPS if s.code is None], ids=lambda s: s.line[:60])
def test_every_readme_command_parses_and_needs_no_checkout(step: Step) -> None:
    """Cheap guard for every run: the flags exist, and no path points into the checkout."""
    try:
        build_parser().parse_args(list(step.args))
    except SystemExit:
        pytest.fail(f"README command does not parse: {step.line}")
    inside = [a for a in step.args if CHECKOUT_RELATIVE.match(a)]
    assert not inside, f"README command uses checkout paths {inside}, which fail outside the checkout: {step.line}"


@pytest.mark.slow
def test_every_readme_command_runs_from_another_folder(smollm2_dir: Path, tmp_path: Path) -> None:
    """In order, in one empty folder outside the checkout, each step must exit 0 (SmolLM2: ~2-3 min on 2 cores)."""
    readme_inputs(tmp_path)
    env = {**os.environ, "RAY_TMPDIR": os.environ.get("RAY_TMPDIR", str(tmp_path / "ray"))}
    for step in STEPS:
        result = subprocess.run(step.argv(), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            pytest.fail(f"README command failed with exit {result.returncode} in {tmp_path}:\n  {step.line}\n"
                        f"ran: {shlex.join(step.argv())}\n--- stderr ---\n{result.stderr[-4000:]}\n"
                        f"--- stdout ---\n{result.stdout[-1500:]}", pytrace=False)
