"""`actcache ls`: caches found under a folder and a bucket prefix, described from manifests only."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from actcache.actcache_cli import main
from actcache.storage import CacheWriter, open_cache
from actcache.storage.backends import open_backend
from actcache.storage.catalog import list_caches
from actcache.storage.snapshots import SnapshotLog
from storage_fixtures import WrittenCache, make_fingerprint, write_unit

# name under ROOT -> (model name, layers, other model config, units' document lengths)
CACHES = {
    "cache3": ("smol", (1, 3), None, [[5, 30], [7]]),
    "team/a/cache1": ("smol", (2,), None, [[600, 9]]),
    "team/b/cache2": ("qwen", (0, 1), {"hidden_size": 32}, [[3, 4, 5]]),
}


def _make_caches(root: str) -> None:
    rng = np.random.default_rng(1)
    for name, (model, layers, config, units) in CACHES.items():
        fingerprint = make_fingerprint(layers=layers)
        if config is not None:
            fingerprint = dataclasses.replace(fingerprint, model={**fingerprint.model, "config": config})
        out = WrittenCache(Path(name), [], {}, {})
        with CacheWriter.open(f"{root}/{name}", fingerprint, {"name": model}) as writer:
            for i, lengths in enumerate(units):
                write_unit(writer, f"{name.replace('/', '-')}-{i}", lengths, rng, out)
    SnapshotLog(open_backend(f"{root}/cache3")).tag("paper-v1")


def _ls_json(root: str, *extra: str, capsys: pytest.CaptureFixture[str]) -> list[dict]:
    assert main(["ls", root, "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _check_against_info(root: str, entries: list[dict]) -> None:
    assert [e["name"] for e in entries] == sorted(CACHES)
    for entry in entries:
        info = open_cache(f"{root}/{entry['name']}").info()
        assert entry["model"] == {"name": CACHES[entry["name"]][0], "digest": info["model"]["digest"]}
        for field in ("dtype", "hooks", "layers", "documents", "tokens", "units", "cache_fingerprint"):
            assert entry[field] == info[field], field
        assert entry["bytes"] == info["activation_bytes_stored"] > 0  # the records' sizes, no chunk listing
        assert entry["tags"] == (["paper-v1"] if entry["name"] == "cache3" else [])
        assert entry["last_commit"] == max(r.created for r in open_cache(entry["url"]).commit_records())


@pytest.mark.parametrize("where", ["disk", "s3"])
def test_ls_lists_every_cache_as_info_describes_it(where: str, tmp_path: Path, request: pytest.FixtureRequest,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    root = str(tmp_path / "lab") if where == "disk" else f"{request.getfixturevalue('s3_url')}/lab"
    _make_caches(root)
    entries = _ls_json(root, capsys=capsys)
    _check_against_info(root, entries)
    assert [e["name"] for e in _ls_json(root, "--model", "QWEN", capsys=capsys)] == ["team/b/cache2"]
    digest = entries[0]["model"]["digest"]
    assert [e["name"] for e in _ls_json(root, "--model", digest[:6], capsys=capsys)] == ["cache3", "team/a/cache1"]
    assert _ls_json(root, "--model", "llama", capsys=capsys) == []
    assert main(["ls", root]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["NAME", "MODEL", "DTYPE"] and len(table) == 4
    assert "paper-v1" in table[1] and table[1].startswith("cache3 ")

    # manifests only: without any segment object (every chunk gone) the listing is the same
    for name in CACHES:
        open_backend(f"{root}/{name}").delete_prefix("segments/")
    assert _ls_json(root, capsys=capsys) == entries


def test_ls_finds_a_root_that_is_a_cache_and_stops_at_the_depth(written_cache: WrittenCache,
                                                              tmp_path: Path) -> None:
    (entry,) = list_caches(str(written_cache.path))
    assert entry["name"] == "." and entry["documents"] == len(written_cache.docs)
    assert list_caches(str(written_cache.path.parent)) == [{**entry, "name": "cache",
                                                            "url": str(written_cache.path)}]
    assert list_caches(str(tmp_path / "nothing-here")) == []
    assert list_caches(str(written_cache.path.parent), depth=0) == []


def test_records_without_sizes_report_bytes_unknown(written_cache: WrittenCache,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Records written before the `bytes` field: the size is unknown, never guessed or listed."""
    backend = open_backend(str(written_cache.path))
    for key in backend.list_prefix("commits/"):
        record = json.loads(backend.get(key))
        for manifest in record["arrays"].values():
            manifest.pop("bytes")
        backend.put(key, json.dumps(record).encode())
    backend.delete_prefix("snapshots/")
    (entry,) = list_caches(str(written_cache.path))
    assert entry["bytes"] is None and entry["documents"] == len(written_cache.docs)
    assert main(["ls", str(written_cache.path)]) == 0
    assert "unknown" in capsys.readouterr().out.splitlines()[1]
