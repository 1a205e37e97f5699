"""Every bad input: one clear line, a non-zero exit, and an existing cache left exactly as it was."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from actcache.actcache_cli import main
from actcache.storage import open_cache
from build_fixtures import TEXTS, write_jsonl_corpus


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    err = capsys.readouterr().err.strip()
    return code, err


def _tree_digest(path: Path) -> str:
    sha = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        sha.update(str(file.relative_to(path)).encode() + file.read_bytes())
    return sha.hexdigest()


@pytest.fixture()
def built(tiny_llama_dir: Path, tmp_path: Path) -> tuple[Path, Path, str]:
    corpus = write_jsonl_corpus(tmp_path / "corpus.jsonl", TEXTS[:3])
    out = tmp_path / "cache"
    assert main(["build", "--model", str(tiny_llama_dir), "--corpus", str(corpus), "--out", str(out),
                 "--layers", "1", "--no-progress"]) == 0
    return corpus, out, _tree_digest(out)


@pytest.mark.parametrize(("case", "expected"), [
    ("missing-corpus", "does not exist"),
    ("empty-corpus", "no corpus layout recognised"),
    ("layer-out-of-range", "layer(s) [9] out of range: this model has layers 0..3"),
    ("unknown-hook", "unknown hook(s) ['mlp_post']: use one or more of resid_pre, resid_mid, resid_post, attn_z"),
    ("not-a-model", "has no config.json"),
    ("other-layers", "capture.layers (cache: [1], now: [2])"),
    ("other-dtype", "dtype"),
    ("other-model", "model."),
])
def test_bad_build_input_is_one_line_and_harmless(case: str, expected: str, built, tiny_llama_dir: Path,
                                                  tiny_moe_dir: Path, tmp_path: Path, capsys) -> None:
    corpus, out, before = built
    (tmp_path / "empty").mkdir()
    args = {"--model": str(tiny_llama_dir), "--corpus": str(corpus), "--out": str(out), "--layers": "1"}
    args.update({
        "missing-corpus": {"--corpus": str(tmp_path / "nope")},
        "empty-corpus": {"--corpus": str(tmp_path / "empty")},
        "layer-out-of-range": {"--layers": "1,9"},
        "unknown-hook": {"--hooks": "resid_post,mlp_post"},
        "not-a-model": {"--model": str(tmp_path / "empty")},
        "other-layers": {"--layers": "2"},
        "other-dtype": {"--dtype": "bfloat16"},
        "other-model": {"--model": str(tiny_moe_dir)},
    }[case])
    code, err = _run(capsys, "build", *[x for pair in args.items() for x in pair], "--no-progress")
    assert code == 2
    assert err.startswith("actcache: error: ") and "\n" not in err
    assert expected in err
    assert _tree_digest(out) == before


def test_cache_path_that_is_not_a_cache(tmp_path: Path, capsys, built) -> None:
    corpus, _, _ = built
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    code, err = _run(capsys, "info", str(tmp_path / "mine"))
    assert code == 2 and "is not an actcache cache" in err
    code, err = _run(capsys, "build", "--model", "tiny-llama", "--corpus", str(corpus), "--out",
                     str(tmp_path / "mine"), "--no-progress")
    assert code == 2 and "choose a new --out" in err
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["thesis.tex"]


def test_empty_and_non_utf8_documents_are_skipped_by_name(tiny_llama_dir: Path, tmp_path: Path, capsys) -> None:
    corpus = tmp_path / "texts"
    corpus.mkdir()
    (corpus / "good.txt").write_text("A perfectly fine document.")
    (corpus / "blank.txt").write_text("   \n")
    (corpus / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    with pytest.warns(UserWarning) as warned:
        code = main(["build", "--model", str(tiny_llama_dir), "--corpus", str(corpus), "--out",
                     str(tmp_path / "cache"), "--layers", "0", "--no-progress"])
    assert code == 0
    messages = " ".join(str(w.message) for w in warned)
    assert "blank.txt" in messages and "latin1.txt" in messages and "UTF-8" in messages
    assert open_cache(tmp_path / "cache").n_documents == 1


def test_full_disk_fails_cleanly_and_keeps_committed_work(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """A 600 KiB tmpfs (private mount namespace) fills during an append; the first build stays intact."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to simulate a full disk")
    small = write_jsonl_corpus(tmp_path / "small.jsonl", TEXTS[:2])
    big = write_jsonl_corpus(tmp_path / "big.jsonl", [t * 10 for t in TEXTS] + TEXTS[:2])
    disk = tmp_path / "disk"
    disk.mkdir()
    build = (f"{sys.executable} -m actcache.actcache_cli build --model {tiny_llama_dir} --out {disk}/cache "
             "--no-progress "
             "--max-length 4096")
    script = (
        f"mount -t tmpfs -o size=600k tmpfs {disk} && "
        f"{build} --corpus {small} && echo FIRST-OK && "
        f"{{ {build} --corpus {big} --unit-tokens 64; echo APPEND-EXIT=$?; }} && "
        f"{sys.executable} -m actcache.actcache_cli verify --no-progress {disk}/cache && "
        f"{sys.executable} -m actcache.actcache_cli info --json {disk}/cache"
    )
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert "FIRST-OK" in out, out
    assert "APPEND-EXIT=2" in out, out
    assert "disk full while writing" in out and "rerun the same command" in out, out
    assert "ok: " in out and '"documents": ' in out, out
    documents = int(out.split('"documents": ')[1].split(",")[0])
    assert documents >= 2, out
