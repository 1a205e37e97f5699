"""The command line tells the user's mistakes from our bugs: one line and exit 2, or a traceback and exit 1."""

from __future__ import annotations

from pathlib import Path

import pytest
from actcache.actcache_cli import main

REPO = Path(__file__).resolve().parent.parent
SENTIMENT = REPO / "tests" / "data" / "sentiment.jsonl"
TRACEBACK = "Traceback (most recent call last)"


@pytest.fixture
def cache(tiny_sentiment_cache: Path) -> Path:
    return tiny_sentiment_cache


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err.strip()


def _case(name: str, cache: Path, tmp: Path, model: Path) -> list[str]:
    """argv of each input mistake that used to escape as a plain ValueError (or an OSError, YAMLError)."""
    build = ["build", "--model", str(model), "--corpus", str(SENTIMENT), "--out", str(tmp / "new"), "--no-progress"]
    (tmp / "bad.yaml").write_text("name: [unclosed\n")
    big_vocab = (REPO / "configs" / "models" / "tiny-llama.yaml").read_text().replace("vocab_size: 512 ",
                                                                                      "vocab_size: 90000")
    (tmp / "big-vocab.yaml").write_text(big_vocab.replace("name: tiny-llama", "name: big-vocab"))
    plan = ["plan", "--model-config", "qwen3-8b", "--layers", "10", "--gpus-per-node", "1", "--gpu-mem-gib", "80"]
    return {
        "layers-not-integers": [*build, "--layers", "8,x"],
        "layer-out-of-range-negative": [*build, "--layers", "-9"],
        "batch-size": [*build, "--batch-size", "0"],
        "max-length": [*build, "--max-length", "0"],
        "unit-tokens": [*build, "--unit-tokens", "-5"],
        "unknown-hook": [*build, "--hooks", "resid_post,mlp_post"],
        "stages": [*build, "--stages", "0"],
        "workers": ["solve", "--cache", str(cache), "--out", str(tmp / "new"), "--label-field", "sentiment",
                    "--positive", "positive", "--workers", "0"],
        "missing-cluster-file": [*plan, "--cluster", str(tmp / "nope.yaml")],
        "model-yaml-not-yaml": ["make-model", str(tmp / "bad.yaml"), "--out", str(tmp / "m")],
        "vocab-too-large": ["make-model", str(tmp / "big-vocab.yaml"), "--out", str(tmp / "m")],
    }[name]


@pytest.mark.parametrize(("name", "expected"), [
    ("layers-not-integers", "--layers '8,x' is not a list of integers"),
    ("layer-out-of-range-negative", "layer(s) [-9] out of range: this model has layers 0..3 (or -4..-1"),
    ("batch-size", "--batch-size must be at least 1"),
    ("unit-tokens", "--unit-tokens must be at least 1"),
    ("max-length", "--max-length must be at least 1"),
    ("unknown-hook", "unknown hook(s) ['mlp_post']"),
    ("stages", "--stages 0 --replicas 1: both must be at least 1"),
    ("workers", "--workers 0: use 1 (in process) or more"),
    ("missing-cluster-file", "nope.yaml: cannot read it"),
    ("model-yaml-not-yaml", "bad.yaml is not valid YAML"),
    ("vocab-too-large", "lower vocab_size in the model YAML"),
])
def test_input_error_is_one_line_and_exit_2(name: str, expected: str, cache: Path, tiny_llama_dir: Path,
                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(capsys, _case(name, cache, tmp_path, tiny_llama_dir))
    assert code == 2, err
    assert "\n" not in err and TRACEBACK not in err, err
    assert expected in err, err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("how", ["flag-first", "flag-last", "env"])
def test_debug_adds_the_traceback_to_input_errors(how: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["info", str(tmp_path)]
    argv = {"flag-first": ["--debug", *argv], "flag-last": [*argv, "--debug"], "env": argv}[how]
    if how == "env":
        monkeypatch.setenv("ACTCACHE_DEBUG", "1")
    code, err = _run(capsys, argv)
    assert code == 2
    assert TRACEBACK in err and "NotACacheError" in err, err
    assert err.splitlines()[-1].startswith("actcache: error: ") and "is not an actcache cache" in err


def test_debug_off_means_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTCACHE_DEBUG", "0")
    code, err = _run(capsys, ["info", str(tmp_path)])
    assert code == 2 and "\n" not in err and TRACEBACK not in err, err


@pytest.mark.parametrize("error", [ValueError("unpacked 3 values, expected 2"), KeyError("layer_7"),
                                   FileNotFoundError(2, "No such file or directory")])
def test_internal_error_shows_the_traceback_and_exits_1(error: Exception, cache: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug deep inside a command (here planted in the reader's summary) is not dressed up as the user's error."""
    from actcache.storage.reader import CacheReader

    def broken(self: CacheReader) -> None:
        raise error

    monkeypatch.setattr(CacheReader, "info", broken)
    code, err = _run(capsys, ["info", str(cache)])
    assert code == 1
    assert TRACEBACK in err and f"{type(error).__name__}: " in err and "in broken" in err, err
    assert err.splitlines()[-1].startswith("actcache: internal error"), err
    assert "actcache: error:" not in err
