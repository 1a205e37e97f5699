"""The one chunk-key rule agrees with zarr's own, and the one temp-folder-then-rename helper is complete or absent."""

from __future__ import annotations

import pytest
import zarr
from actcache.storage.atomic_dir import atomic_dir
from actcache.storage.layout import chunk_key


def test_chunk_key_is_zarrs_default_v3_key(tmp_path):
    array = zarr.create_array(store=tmp_path / "a", shape=(10, 4), chunks=(2, 4), dtype="float32")
    array[:] = 1.0
    for i in range(5):
        assert array.metadata.encode_chunk_key((i, 0)) == chunk_key(i)
        assert (tmp_path / "a" / chunk_key(i)).is_file()


def test_atomic_dir_writes_complete_or_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (out / "a.txt").read_text() == "first"
    with pytest.raises(FileExistsError):
        with atomic_dir(out):
            pass
    with pytest.raises(RuntimeError), atomic_dir(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("second")
        raise RuntimeError("killed")
    assert [p.name for p in out.iterdir()] == ["a.txt"]  # the old folder, untouched
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("second")
    assert [p.name for p in out.iterdir()] == ["b.txt"]  # replaced as a whole
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or old sibling left
