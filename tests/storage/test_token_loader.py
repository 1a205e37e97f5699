"""The training loader (`CacheReader.tokens`): exactly-once coverage, alignment with `activations()`, the same
order for any number of workers, disjoint rank shards, filters, and exact resumption."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from actcache.storage import CacheWriter, CorruptCacheError, open_cache
from actcache.storage.errors import CacheError
from storage_fixtures import WrittenCache, make_fingerprint, write_unit
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

STREAMS = [("resid_post", 1), ("resid_post", 3), ("attn_z", 1), ("attn_z", 3)]
SMALL = {"batch_size": 100, "buffer_tokens": 400}  # windows of 4 batches over 64-row units


def _small_chunks(width: int, itemsize: int) -> int:
    """Chunks of 32 rows (resid_post) and 64 rows (attn_z): many chunks of two heights in a tiny cache."""
    return 32 if width == 16 else 64


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> WrittenCache:
    """Three units, 2401 tokens in ~40 units of 64 rows; documents from 1 to 700 tokens."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("actcache.storage.writer.chunk_tokens_for", _small_chunks)
        rng = np.random.default_rng(0)
        out = WrittenCache(tmp_path_factory.mktemp("loader") / "cache", [], {}, {})
        writer = CacheWriter.open(out.path, make_fingerprint())
        write_unit(writer, "unit-a", [5, 300, 1, 40, 77], rng, out)
        write_unit(writer, "unit-b", [700, 9, 13], rng, out)
        write_unit(writer, "unit-c", [int(n) for n in rng.integers(1, 60, 40)], rng, out)
    return out


def _collect(batches) -> list[dict[str, np.ndarray]]:
    return [{k: v.numpy() for k, v in batch.items()} for batch in batches]


def _token_index(batches: list[dict[str, np.ndarray]]) -> np.ndarray:
    return np.concatenate([b["token_index"] for b in batches])


def _expected(cache: WrittenCache) -> dict[str, np.ndarray]:
    """Every stream's rows in `documents()` order, read back through `activations()`."""
    reader = open_cache(cache.path)
    return {f"{h}.{layer}": np.concatenate([reader.activations(h, layer, d.key) for d in reader.documents()])
            for h, layer in STREAMS}


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_token_once_with_all_hooks_aligned(cache: WrittenCache, shuffle: bool) -> None:
    batches = _collect(open_cache(cache.path).tokens(shuffle=shuffle, **SMALL))
    sizes = [len(b["token_index"]) for b in batches]
    assert sizes == [100] * 24 + [1]  # 2401 tokens: full batches, then the epoch's short last one
    order = _token_index(batches)
    np.testing.assert_array_equal(np.sort(order), np.arange(2401))
    if not shuffle:
        np.testing.assert_array_equal(order, np.arange(2401))
    expected = _expected(cache)
    for key, rows in expected.items():
        np.testing.assert_array_equal(np.concatenate([b[key] for b in batches]), rows[order])
    written = np.concatenate([cache.values[("attn_z", 3, d.key)] for d in cache.docs])
    np.testing.assert_array_equal(expected["attn_z.3"], written)


def test_shuffle_mixes_documents_across_the_window(cache: WrittenCache) -> None:
    reader = open_cache(cache.path)
    doc_of = np.repeat(np.arange(reader.n_documents), [d.n_tokens for d in reader.documents()])
    shuffled = _collect(reader.tokens(seed=1, **SMALL))
    sequential = _collect(reader.tokens(shuffle=False, **SMALL))
    distinct = [np.mean([len(set(doc_of[b["token_index"]])) for b in run[:-1]]) for run in (shuffled, sequential)]
    assert distinct[0] > 1.5 * distinct[1]  # rows of one batch come from many more documents
    again = _token_index(_collect(reader.tokens(seed=1, **SMALL)))
    np.testing.assert_array_equal(_token_index(shuffled), again)
    assert not np.array_equal(_token_index(shuffled), _token_index(_collect(reader.tokens(seed=2, **SMALL))))


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("sharable", [True, False], ids=["memfd", "torch-shared-memory"])
def test_same_batches_for_any_number_of_workers_and_threads(cache: WrittenCache, shuffle: bool, sharable: bool,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers decode into memory the main process maps (Linux), or, without memfd, hand out plain tensors that
    torch copies: the same batches either way."""
    monkeypatch.setattr("actcache.storage.token_loader.SHARABLE", sharable)  # forked workers inherit it
    reader = open_cache(cache.path)
    reference = _collect(reader.tokens(shuffle=shuffle, epochs=2, threads=1, **SMALL))
    for workers, threads in ((2, 2), (3, 1)):  # one thread: a worker decodes on its own thread
        ds = reader.tokens(shuffle=shuffle, epochs=2, threads=threads, **SMALL)
        loader = DataLoader(ds, batch_size=None, num_workers=workers)
        got = [{k: v.numpy() for k, v in batch.items()} | {"in": _shared_object(batch["resid_post.1"])[1]}
               for batch in loader]
        assert all(batch.pop("in").startswith("/memfd:actcache-window " if sharable else "/dev/shm/torch_")
                   for batch in got)
        assert len(got) == len(reference) == 50
        for mine, theirs in zip(got, reference, strict=True):
            assert mine.keys() == theirs.keys()
            for key in mine:
                np.testing.assert_array_equal(mine[key], theirs[key])


@pytest.mark.parametrize("shuffle", [False, True])
def test_one_dataset_read_in_process_stopped_early_then_by_forked_workers(cache: WrittenCache, shuffle: bool) -> None:
    """The decoding threads outlive an iteration (epoch); a read stopped mid-window waits for its running tasks
    before the window's memory is reused, and DataLoader workers forked from a process that already read start
    their own threads (a forked pool has none: without that the workers would wait forever)."""
    reference = _collect(open_cache(cache.path).tokens(shuffle=shuffle, threads=1, **SMALL))
    ds = open_cache(cache.path).tokens(shuffle=shuffle, threads=2, **SMALL)
    for stop in (3, 1, 7):  # stopped after a few batches, with later windows still decoding
        for i, _ in enumerate(ds):
            if i == stop:
                break
    ds.load_state_dict({**ds.state_dict(), "step": 0})  # start over
    forked = list(DataLoader(ds, batch_size=None, num_workers=2, timeout=120))
    # the workers decode into memory the main process maps, not into the buffers they inherited
    assert all(_shared_object(b["resid_post.1"])[1].startswith("/memfd:actcache-window ") for b in forked)
    for got in (_collect(ds), _collect(forked), _collect(ds)):
        assert len(got) == len(reference) == 25
        for mine, theirs in zip(got, reference, strict=True):
            for key in theirs:
                np.testing.assert_array_equal(mine[key], theirs[key])


def _hold(batch: dict[str, torch.Tensor], views: bool) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """(a copy of the tokens now, what is kept: the batch itself, or views of its rows 3..39)"""
    kept = {k: v[3:40] for k, v in batch.items()} if views else batch
    return kept["token_index"].numpy().copy(), kept


def _kept_rows_are_intact(expected: dict[str, np.ndarray], tokens: np.ndarray, kept: dict[str, torch.Tensor]) -> None:
    """A held batch still holds the tokens it was received with, and their rows (a window reused under it would
    have rewritten both, consistently)."""
    np.testing.assert_array_equal(kept["token_index"].numpy(), tokens)
    for key, rows in expected.items():
        np.testing.assert_array_equal(kept[key].numpy(), rows[tokens])


@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_kept_across_epochs_are_never_overwritten(cache: WrittenCache, shuffle: bool) -> None:
    """Window memory is reused by later windows and epochs, but never under a batch (or a view of one) still held."""
    expected = _expected(cache)
    ds = open_cache(cache.path).tokens(shuffle=shuffle, **SMALL)
    held = []
    for _ in range(3):
        for i, batch in enumerate(ds):
            if i % 5 == 0:
                held.append(_hold(batch, views=i % 10 == 5))
    assert len(held) == 15
    for tokens, kept in held:
        _kept_rows_are_intact(expected, tokens, kept)


def _shared_object(tensor: torch.Tensor) -> tuple[int, str]:
    """(inode, name) of the shared-memory object a tensor received from a DataLoader worker lies in
    (/proc/self/maps)."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, _, _, _, inode, *name = line.split()
        lo, hi = (int(a, 16) for a in span.split("-"))
        if lo <= address < hi:
            return int(inode), " ".join(name)
    raise AssertionError(f"no mapping holds address {address:#x}")


@pytest.mark.parametrize("shuffle", [False, True])
def test_workers_reuse_shared_memory_but_never_under_a_batch_still_held(cache: WrittenCache, shuffle: bool) -> None:
    """DataLoader workers decode into shared memory the main process maps; a worker reuses a window's buffer once
    every batch from it (and every view of one) is gone in the main process, and never while one is held."""
    expected = _expected(cache)
    ds = open_cache(cache.path).tokens(shuffle=shuffle, **SMALL)
    slots = 4 if shuffle else 1  # batches per window: shuffled, worker 0 serves 400-row windows; else one each
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
    held = []  # (batch number, its tokens, what is kept of it)
    buffers, windows = [], []
    for epoch in range(3):
        for i, batch in enumerate(loader):
            buffers.append(_shared_object(batch["token_index"])[0])
            windows.append((epoch, i // slots))
            if i % 5 == 0:
                held.append((len(buffers) - 1, *_hold(batch, views=i % 10 == 5)))
            del batch
    assert len(buffers) == 75 and len(set(buffers)) <= len(held) + 16  # buffers are reused (75 without)...
    for number, tokens, kept in held:
        later = {w for b, w in zip(buffers[number:], windows[number:], strict=True) if b == buffers[number]}
        assert later == {windows[number]}  # ...but never for another window while a batch or a view is held
        _kept_rows_are_intact(expected, tokens, kept)


def test_batches_queued_beyond_the_spare_windows_keep_their_memory(cache: WrittenCache) -> None:
    """Workers far ahead of the main process (a deep prefetch) retire windows whose batches are still queued: the
    memory stays open until the main process has taken and released them, so every batch arrives intact."""
    expected = _expected(cache)
    ds = open_cache(cache.path).tokens(shuffle=False, epochs=2, **SMALL)
    batches = iter(DataLoader(ds, batch_size=None, num_workers=2, prefetch_factor=30, timeout=120))
    first = next(batches)
    time.sleep(1.0)  # the workers decode their remaining 24 batches each, one window apiece, 8 kept for reuse
    got = [first, *batches]
    assert len(got) == 50
    for batch in got:
        tokens = batch["token_index"].numpy()
        for key, rows in expected.items():
            np.testing.assert_array_equal(batch[key].numpy(), rows[tokens])
    assert sorted(np.concatenate([b["token_index"].numpy() for b in got]).tolist()) == sorted(2 * list(range(2401)))


def test_ranks_get_disjoint_equal_shards(cache: WrittenCache) -> None:
    reader = open_cache(cache.path)
    for world in (2, 3, 4):
        shards = [_collect(reader.tokens(rank=r, world_size=world, **SMALL)) for r in range(world)]
        counts = {len(s) for s in shards}
        assert counts == {25 // world}  # 25 batches: at most world - 1 dropped
        seen = np.concatenate([_token_index(s) for s in shards])
        assert len(np.unique(seen)) == len(seen)  # never a token twice
        assert len(seen) >= 2401 - (world - 1) * 100 - 1


@pytest.mark.parametrize("shuffle", [False, True])
def test_where_and_positions_select_documents_and_tokens(cache: WrittenCache, shuffle: bool) -> None:
    reader = open_cache(cache.path)
    docs = reader.documents()
    starts = np.concatenate([[0], np.cumsum([d.n_tokens for d in docs])])
    for where, positions, keep in [({"source": "unit-c.txt"}, 1, lambda d, p: p >= 1),
                                   ({"index": [0, 1]}, slice(2, 10), lambda d, p: 2 <= p < 10),
                                   (None, slice(0, -1), lambda d, p: p < d.n_tokens - 1)]:
        ds = reader.tokens(where=where, positions=positions, batch_size=64, buffer_tokens=256, shuffle=shuffle)
        batches = _collect(ds)
        got = _token_index(batches)
        wanted = [starts[i] + p for i, d in enumerate(docs) for p in range(d.n_tokens)
                  if keep(d, p) and (where is None or all(
                      d.meta.get(f) in (v if isinstance(v, list) else [v]) for f, v in where.items()))]
        np.testing.assert_array_equal(np.sort(got), wanted)
        assert all(len(b["token_index"]) == 64 for b in batches[:-1])
        expected = _expected(cache)
        np.testing.assert_array_equal(np.concatenate([b["attn_z.1"] for b in batches]), expected["attn_z.1"][got])


def test_resume_in_process_ignores_units_appended_since(cache: WrittenCache, tmp_path: Path) -> None:
    import shutil

    path = tmp_path / "copy"
    shutil.copytree(cache.path, path)
    settings = {"seed": 3, "epochs": 2, "hooks": ["attn_z"], "layers": [3], **SMALL}
    full = _collect(open_cache(path).tokens(**settings))
    ds = open_cache(path).tokens(**settings)
    head = []
    for batch in ds:
        head.append({k: v.numpy() for k, v in batch.items()})
        if len(head) == 31:  # into the second epoch
            break
    state = ds.state_dict()
    write_unit(CacheWriter.open(path, make_fingerprint()), "unit-late", [90, 250], np.random.default_rng(5),
               WrittenCache(path, [], {}, {}))
    fresh = open_cache(path).tokens(**settings)
    assert fresh.plan.n_selected == 2401 + 340  # the fresh reader sees the append ...
    fresh.load_state_dict(state)
    rest = _collect(fresh)  # ... the resumed run does not
    assert len(head) + len(rest) == len(full)
    for mine, theirs in zip(head + rest, full, strict=True):
        np.testing.assert_array_equal(mine["token_index"], theirs["token_index"])
        np.testing.assert_array_equal(mine["attn_z.3"], theirs["attn_z.3"])


def test_resume_through_stateful_dataloader_with_two_workers(cache: WrittenCache) -> None:
    settings = {"seed": 4, "epochs": 2, **SMALL}
    reader = open_cache(cache.path)
    full = _collect(reader.tokens(**settings))
    loader = StatefulDataLoader(reader.tokens(**settings), batch_size=None, num_workers=2)
    head = []
    for batch in loader:
        head.append({k: v.numpy() for k, v in batch.items()})
        if len(head) == 17:
            break
    state = loader.state_dict()
    del loader
    resumed = StatefulDataLoader(open_cache(cache.path).tokens(**settings), batch_size=None, num_workers=2)
    resumed.load_state_dict(state)
    rest = _collect(resumed)
    assert [len(head), len(rest)] == [17, len(full) - 17]
    for mine, theirs in zip(head + rest, full, strict=True):
        for key in theirs:
            np.testing.assert_array_equal(mine[key], theirs[key])


def test_a_state_from_other_settings_is_refused(cache: WrittenCache) -> None:
    reader = open_cache(cache.path)
    state = reader.tokens(seed=0, **SMALL).state_dict()
    with pytest.raises(CacheError, match="seed"):
        reader.tokens(seed=1, **SMALL).load_state_dict(state)
    with pytest.raises(CacheError, match="changed"):
        reader.tokens(seed=0, where={"source": "unit-a.txt"}, **SMALL).load_state_dict(
            {**state, "settings": state["settings"]})
    with pytest.raises(ValueError, match="rank"):
        reader.tokens(rank=2, world_size=2)
    with pytest.raises(ValueError, match="no document has"):
        reader.tokens(where={"split": "train"})
    with pytest.raises(ValueError, match="fewer than world_size=30"):
        reader.tokens(rank=0, world_size=30, **SMALL)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_cache_reads_as_float32_or_its_own_bits(tmp_path: Path, dtype: str) -> None:
    """Rows read as float32 are torch's own widening of the stored bits, in storage order and shuffled (the
    decoding tasks widen them into the window), in-process and from DataLoader workers, which hand over the
    widened rows, like the stored bits, as views of their shared window memory."""
    rng = np.random.default_rng(7)
    out = WrittenCache(tmp_path / dtype, [], {}, {})
    write_unit(CacheWriter.open(out.path, make_fingerprint(dtype)), "u", [300, 7], rng, out)
    reader = open_cache(out.path)
    bits = next(iter(reader.tokens(hooks=["resid_post"], layers=[1], batch_size=307, shuffle=False, dtype=dtype)))
    assert bits["resid_post.1"].dtype == getattr(torch, dtype)
    if dtype == "bfloat16":
        stored = np.concatenate([out.values[("resid_post", 1, k)] for k in ("u-doc0", "u-doc1")])
        np.testing.assert_array_equal(bits["resid_post.1"].view(torch.int16).numpy(), stored.view(np.int16))
    for shuffle in (False, True):
        settings = {"batch_size": 50, "buffer_tokens": 150, "shuffle": shuffle}
        own = list(reader.tokens(dtype=dtype, **settings))
        wide = list(reader.tokens(**settings))
        assert len(wide) == len(own) == 7
        for a, b in zip(wide, own, strict=True):
            assert torch.equal(a["token_index"], b["token_index"])
            assert all(a[k].dtype == torch.float32 and torch.equal(a[k], b[k].float()) for k in a if k != "token_index")
        for read_as, expected in ((dtype, own), ("float32", wide)):
            mine = list(DataLoader(reader.tokens(dtype=read_as, **settings), batch_size=None, num_workers=2))
            assert all(torch.equal(a[k], b[k]) for a, b in zip(mine, expected, strict=True) for k in a)
            assert all(_shared_object(batch[k])[1].startswith("/memfd:actcache-window ") for batch in mine
                       for k in batch)


def test_a_missing_chunk_stops_the_read(cache: WrittenCache, tmp_path: Path) -> None:
    import shutil

    path = tmp_path / "damaged"
    shutil.copytree(cache.path, path)
    victim = sorted(path.glob("segments/*/attn_z/layer_3/c/3/0"))[0]
    victim.unlink()
    with pytest.raises(CorruptCacheError, match=r"missing.*documents unit-"):
        list(open_cache(path).tokens(shuffle=False, **SMALL))
    for threads in (1, 2):  # a worker decoding on its own thread, or on a pool: the same error, in the main process
        loader = DataLoader(open_cache(path).tokens(shuffle=False, threads=threads, **SMALL), batch_size=None,
                            num_workers=2)
        with pytest.raises(CorruptCacheError, match=r"missing.*documents unit-"):
            list(loader)


def test_stats_command_matches_numpy_over_the_whole_cache(cache: WrittenCache, tmp_path: Path) -> None:
    import json

    from actcache.actcache_cli import main
    from actcache.storage.activation_stats import QUANTILES, activation_stats

    out = tmp_path / "stats.json"
    assert main(["stats", str(cache.path), "--hooks", "attn_z", "--layers", "1,3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    expected = _expected(cache)
    assert sorted(result["arrays"]) == ["attn_z.1", "attn_z.3"] and result["tokens"] == 2401
    for key, entry in result["arrays"].items():
        rows = expected[key].astype(np.float64)
        np.testing.assert_allclose(entry["mean"], rows.mean(axis=0), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(entry["std"], rows.std(axis=0), rtol=1e-10)
        norms = np.linalg.norm(rows, axis=1)
        np.testing.assert_allclose(list(entry["norm_quantiles"].values()), np.quantile(norms, QUANTILES), rtol=1e-10)
    sampled = activation_stats(open_cache(cache.path), ("resid_post",), (3,), sample=1000)["arrays"]["resid_post.3"]
    assert sampled["tokens"] == 2401  # the moments still use every token
    median = np.quantile(np.linalg.norm(expected["resid_post.3"], axis=1), 0.5)
    assert abs(sampled["norm_quantiles"]["0.5"] - median) < 0.1 * median


def test_stats_refuse_non_finite_values(tmp_path: Path) -> None:
    from actcache.storage import DocRecord
    from actcache.storage.activation_stats import activation_stats
    from actcache.storage.errors import NonFiniteError

    writer = CacheWriter.open(tmp_path / "nan", make_fingerprint(layers=(0,)))
    docs = [DocRecord("clean", 5, {"source": "a.txt"}), DocRecord("broken", 4, {"source": "b.txt"})]
    segment = writer.begin_segment("u", docs, np.zeros(9, dtype=np.int64))
    seg_writer = writer.segment_writer(segment)
    for name, width in (("resid_post/layer_0", 16), ("attn_z/layer_0", 12)):
        rows = np.ones((9, width), np.float32)
        if name.startswith("attn_z"):
            rows[7, 3] = np.inf
        seg_writer.append(name, rows)
    assert writer.commit("u", segment, docs, seg_writer.close())
    reader = open_cache(tmp_path / "nan")
    assert activation_stats(reader, ("resid_post",), (0,))["arrays"]["resid_post.0"]["mean"] == [1.0] * 16
    with pytest.raises(NonFiniteError, match="attn_z.0: NaN/inf values in 1 token.*broken"):
        activation_stats(reader, ("resid_post", "attn_z"), (0,))
