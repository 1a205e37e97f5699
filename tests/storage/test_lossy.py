"""Lossy storage modes: codes against torch's own conversions, the int8 bound, every reader path, the fingerprint
refusal, and the per-commit error records against an exact build of the same corpus."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from actcache.cache_builder.build import BuildSettings, build_cache
from actcache.storage import CacheFingerprint, CacheWriter, FingerprintMismatchError, open_cache, verify_cache
from actcache.storage.cache_copy import copy_cache
from actcache.storage.cli import format_info
from actcache.storage.errors import CorruptCacheError
from actcache.storage.lossy import OUTLIERS, decode, encode, row_errors, side_names
from storage_fixtures import WIDTHS, WrittenCache, make_fingerprint, write_unit

sys.path.insert(0, str(Path(__file__).parents[1] / "cache_builder"))
from build_fixtures import TEXTS, write_jsonl_corpus  # noqa: E402

MODES = ("bfloat16", "fp8", "int8")


def _rows(seed: int = 0, n: int = 300, width: int = 64) -> np.ndarray:
    """Rows over many magnitudes, with a zero row, negative zeros and a row of exact fp8 midpoints."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, width)) * np.exp(3 * rng.standard_normal((n, 1)))).astype(np.float32)
    x[3] = 0
    x[4, :7] = -0.0
    finite = torch.arange(127, dtype=torch.uint8).view(torch.float8_e4m3fn).float().numpy()
    midpoints = (finite[:-1] + finite[1:]) / 2  # ties: round to even
    x[5] = np.resize(midpoints[::2], width)
    x[5, 0] = 448.0  # its scale is then exactly 1
    return x


def _massive(seed: int = 2, n: int = 300, width: int = 64) -> np.ndarray:
    """Rows like a residual stream's: a few massive columns (~300x the rest) in most rows, other ones in a few
    (attention-sink tokens), a row of ties and a row with a NaN."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, width)).astype(np.float32)
    x[:, [5, 40]] *= 300
    x[::7, 11] = -600
    x[9] = 1.5
    x[10, 3] = np.nan
    return x


def test_bfloat16_codes_are_torch_rounding_bit_for_bit():
    x = _rows()
    codes, sides = encode(x, "bfloat16")
    expected = torch.from_numpy(x).to(torch.bfloat16)
    assert sides == ()
    assert np.array_equal(codes, expected.view(torch.int16).numpy().view(np.uint16))
    assert np.array_equal(decode(codes, (), "bfloat16"), expected.float().numpy())


def test_fp8_codes_are_torch_float8_e4m3fn_with_the_row_scales_bit_for_bit():
    """Without outliers (the layout of caches made before them): one scale per row."""
    x = _rows()
    codes, (scales,) = encode(x, "fp8")
    xt = torch.from_numpy(x)
    absmax = xt.abs().amax(dim=1, keepdim=True)
    assert np.array_equal(scales, (absmax / 448).numpy())
    st = torch.from_numpy(scales)
    expected = (xt / torch.where(st == 0, 1, st)).to(torch.float8_e4m3fn)
    assert np.array_equal(codes, expected.view(torch.uint8).numpy())
    assert np.array_equal(decode(codes, (scales,), "fp8"), (expected.float() * st).numpy())
    every = np.arange(256, dtype=np.uint8)[:, None]
    assert np.array_equal(decode(every, (np.ones((256, 1), np.float32),), "fp8"),
                          torch.from_numpy(every).view(torch.float8_e4m3fn).float().numpy(), equal_nan=True)


@pytest.mark.parametrize(("x", "massive"), [(_rows(), False), (_massive(), True)], ids=["magnitudes", "massive"])
def test_fp8_outliers_come_back_exact_and_the_rest_is_torch_float8_bit_for_bit(x, massive):
    k = OUTLIERS["fp8"]
    codes, (scales, dims, values) = encode(x, "fp8", k)
    assert dims.dtype == np.uint16 and dims.shape == values.shape == (len(x), k)
    xt, dt = torch.from_numpy(x), torch.from_numpy(dims.astype(np.int64))
    assert (dt.diff(dim=1) > 0).all()  # distinct columns, ascending
    magnitude = xt.abs().nan_to_num(nan=float("inf"))  # a NaN is kept as an outlier first
    rest = xt.scatter(1, dt, 0.0)
    assert (magnitude.gather(1, dt).amin(dim=1) >= rest.abs().nan_to_num(nan=float("inf")).amax(dim=1)).all()
    assert np.array_equal(values, xt.gather(1, dt).numpy(), equal_nan=True)  # the exact values, bit for bit
    st = torch.from_numpy(scales)
    assert np.array_equal(scales, (rest.abs().amax(dim=1, keepdim=True) / 448).numpy(), equal_nan=True)
    expected = (rest / torch.where(st == 0, 1, st)).to(torch.float8_e4m3fn)  # outliers: 0, code 0
    assert np.array_equal(codes, expected.view(torch.uint8).numpy())
    decoded = decode(codes, (scales, dims, values), "fp8")
    assert np.array_equal(decoded, (expected.float() * st).scatter(1, dt, xt.gather(1, dt)).numpy(), equal_nan=True)
    finite = np.isfinite(x).all(axis=1)
    assert np.array_equal(np.take_along_axis(decoded, dims.astype(np.int64), 1)[finite],
                          np.take_along_axis(x, dims.astype(np.int64), 1)[finite])
    assert not np.isfinite(decoded[~finite]).all(axis=1).any()  # a NaN row reads non-finite: check_finite refuses it
    old = decode(*encode(x, "fp8"), "fp8")  # one scale for the whole row: massive columns swamp the rest
    rel, rel_old = row_errors(x, decoded)[0], row_errors(x, old)[0]
    assert rel.max() < 0.05 and rel.mean() < (0.1 if massive else 0.7) * rel_old.mean()  # measured: 0.05x, 0.53x


@pytest.mark.parametrize("outliers", [0, OUTLIERS["int8"]])
def test_int8_stays_within_half_a_scale_of_every_value(outliers):
    x = _rows(1)
    codes, (scales, *kept) = encode(x, "int8", outliers)
    assert codes.dtype == np.int8 and codes.min() >= -127
    decoded = decode(codes, (scales, *kept), "int8")
    err = np.abs(decoded - x)
    # |x - code * scale| <= scale / 2, up to float32 rounding of x / scale and code * scale (|x| <= 127 scale)
    assert (err <= scales * (0.5 + 127 * 2.0 ** -22)).all()
    assert (np.abs(codes).max(axis=1)[scales[:, 0] > 0] == 127).all()  # the full range is used
    assert (decoded[3] == 0).all()
    if outliers:  # kept exactly, and the scale is the absmax of the other values
        dims = kept[0].astype(np.int64)
        assert np.array_equal(np.take_along_axis(decoded, dims, 1), np.take_along_axis(x, dims, 1))
        others = x.copy()
        np.put_along_axis(others, dims, 0, axis=1)
        assert np.array_equal(scales[:, 0], np.abs(others).max(axis=1) / np.float32(127))


def test_a_row_narrower_than_the_outlier_count_is_kept_whole():
    x = _massive()[:, :8]
    codes, sides = encode(x, "fp8", 16)
    assert sides[1].shape == (len(x), 8) and not codes.any() and not sides[0].any()
    assert np.array_equal(decode(codes, sides, "fp8"), x, equal_nan=True)


CASES = [("bfloat16", "float32", 0), ("fp8", "float32", OUTLIERS["fp8"]), ("int8", "float32", OUTLIERS["int8"]),
         ("fp8", "bfloat16", OUTLIERS["fp8"]), ("fp8", "float32", 0)]  # the last: a cache made before outliers


def _lossy_fingerprint(mode: str, compute: str = "float32", outliers: int = 0) -> CacheFingerprint:
    fp = make_fingerprint(compute)
    return dataclasses.replace(fp, capture=dataclasses.replace(fp.capture, store_as=mode, outliers=outliers))


@pytest.mark.parametrize(("mode", "compute", "outliers"), CASES)
def test_every_reader_path_returns_the_decoded_rows(tmp_path, mode, compute, outliers):
    fp = _lossy_fingerprint(mode, compute, outliers)
    out = WrittenCache(tmp_path / "c", [], {}, {})
    with CacheWriter.open(out.path, fp) as writer:
        rng = np.random.default_rng(0)
        write_unit(writer, "u1", [300, 5, 900], rng, out)
        write_unit(writer, "u2", [40, 2000], rng, out)
    cache = open_cache(out.path)
    assert cache.store_as == mode and cache.fingerprint.capture.outliers == outliers
    assert ("outliers" in cache.fingerprint.to_dict()["capture"]) == bool(outliers)  # absent: the old header
    docs = cache.documents()
    exact = {k: (v.astype(np.uint32) << 16).view(np.float32) if compute == "bfloat16" else v  # bf16 bits widened
             for k, v in out.values.items()}
    expected = {k: decode(*encode(v, mode, outliers), mode) for k, v in exact.items()}
    for (hook, layer, key), rows in expected.items():
        assert np.array_equal(cache.activations(hook, layer, key), rows)
        assert np.array_equal(cache.activations(hook, layer, key, span=(1, 3)), rows[1:3])
        assert np.array_equal(cache.tensor(hook, layer, key).float().numpy(), rows)
    streamed = [(d.key, rows) for d, rows in cache.iter_activations("attn_z", 3, block_bytes=4096)]
    assert len(streamed) == len(docs)
    assert all(np.array_equal(rows, expected[("attn_z", 3, key)]) for key, rows in streamed)
    whole = {h: np.concatenate([expected[(h, 1, d.key)] for d in docs]) for h in WIDTHS}
    assert np.array_equal(cache.xarray("resid_post", [1])["layer_1"].values, whole["resid_post"])
    for shuffle in (False, True):
        got = {h: np.zeros_like(v) for h, v in whole.items()}
        for batch in cache.tokens(["resid_post", "attn_z"], [1], batch_size=256, shuffle=shuffle, buffer_tokens=700):
            for hook in WIDTHS:
                got[hook][batch["token_index"].numpy()] = batch[f"{hook}.1"].numpy()
        assert all(np.array_equal(got[h], whole[h]) for h in WIDTHS)
    if mode == "bfloat16":  # the stored dtype on request
        assert cache.tensor("resid_post", 1, docs[0].key).dtype == torch.bfloat16
        assert next(iter(cache.tokens(dtype="bfloat16", batch_size=64)))["resid_post.1"].dtype == torch.bfloat16
    assert verify_cache(out.path).ok
    info = cache.info()
    assert info["activation_bytes_raw"] == sum(v.nbytes for v in out.values.values())  # the compute dtype's size
    assert info["outliers"] == outliers
    assert set(info["lossy_error"]) == {f"{h}/layer_{layer}" for h in WIDTHS for layer in (1, 3)}
    text = format_info(info)
    assert f"stored as {mode} (lossy)" in text and "lossy error  attn_z/layer_1: rel. L2 mean" in text


@pytest.mark.parametrize("side", range(3))
def test_a_missing_side_chunk_is_refused_not_read_as_fill(tmp_path, side):
    out = WrittenCache(tmp_path / "c", [], {}, {})
    with CacheWriter.open(out.path, _lossy_fingerprint("fp8", outliers=OUTLIERS["fp8"])) as writer:
        write_unit(writer, "u1", [30, 50], np.random.default_rng(0), out)
    segment = next(p for p in (out.path / "segments").iterdir() if p.is_dir())
    (segment / side_names("resid_post", 1, "fp8", OUTLIERS["fp8"])[side] / "c" / "0" / "0").unlink()
    with pytest.raises(CorruptCacheError, match="missing"):
        open_cache(out.path).activations("resid_post", 1, "u1-doc0")
    with pytest.raises(CorruptCacheError, match="missing"):
        next(iter(open_cache(out.path).tokens(["resid_post"], [1], batch_size=16)))
    assert not verify_cache(out.path).ok


def test_a_copied_slice_keeps_the_side_arrays_of_its_hooks_and_reads_the_same(tmp_path):
    out = WrittenCache(tmp_path / "c", [], {}, {})
    with CacheWriter.open(out.path, _lossy_fingerprint("fp8", outliers=OUTLIERS["fp8"])) as writer:
        write_unit(writer, "u1", [30, 50], np.random.default_rng(0), out)
    copy_cache(str(out.path), str(tmp_path / "slice"), hooks="attn_z", layers="3")
    source, copy = open_cache(out.path), open_cache(tmp_path / "slice")
    assert copy.fingerprint.capture.outliers == OUTLIERS["fp8"]
    assert set(copy.commit_records()[0].arrays) == {"attn_z/layer_3", *side_names("attn_z", 3, "fp8", OUTLIERS["fp8"])}
    for doc in copy.documents():
        assert np.array_equal(copy.activations("attn_z", 3, doc.key), source.activations("attn_z", 3, doc.key))
    assert verify_cache(tmp_path / "slice").ok


def test_a_mixed_mode_append_is_refused_naming_the_field(tmp_path):
    exact = make_fingerprint()
    with CacheWriter.open(tmp_path / "c", exact):
        pass
    fp8 = dataclasses.replace(exact, capture=dataclasses.replace(exact.capture, store_as="fp8"))
    with pytest.raises(FingerprintMismatchError, match=r"capture\.store_as"):
        CacheWriter.open(tmp_path / "c", fp8)
    assert exact.digest == make_fingerprint().digest  # an exact spec keeps the digest caches had before lossy modes
    with CacheWriter.open(tmp_path / "old", fp8):  # an fp8 cache made before outliers: read, but not appended to
        pass
    with pytest.raises(FingerprintMismatchError, match=r"capture\.outliers"):
        CacheWriter.open(tmp_path / "old", _lossy_fingerprint("fp8", outliers=OUTLIERS["fp8"]))
    with pytest.raises(ValueError, match="outliers"):
        _lossy_fingerprint("bfloat16", outliers=4)


@pytest.fixture(scope="module")
def exact_and_fp8(tmp_path_factory, tiny_llama_dir) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lossy-build")
    corpus = write_jsonl_corpus(root / "corpus.jsonl", [f"{t} Part {i}." for i in range(3) for t in TEXTS])
    paths = []
    for mode in ("exact", "fp8"):
        build_cache(BuildSettings(model=str(tiny_llama_dir), corpus=corpus, out=root / mode, layers="0,1",
                                  batch_size=4, unit_tokens=96, progress=False, store_as=mode))
        paths.append(root / mode)
    return paths[0], paths[1]


def test_commit_error_records_equal_an_independent_measure_against_an_exact_build(exact_and_fp8):
    exact, lossy = open_cache(exact_and_fp8[0]), open_cache(exact_and_fp8[1])
    records = lossy.commit_records()
    assert len(records) > 1 and lossy.store_as == "fp8" and exact.store_as == "exact"
    everything: dict[str, list[torch.Tensor]] = {}
    for record in records:
        for hook in lossy.hooks:
            for layer in lossy.layers:
                name = f"{hook}/layer_{layer}"
                x = torch.cat([torch.from_numpy(exact.activations(hook, layer, d.key)) for d in record.documents])
                y = torch.cat([torch.from_numpy(lossy.activations(hook, layer, d.key)) for d in record.documents])
                rel = ((y.double() - x.double()).norm(dim=1) / x.double().norm(dim=1))
                cos = torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=1)
                got = record.arrays[name].error
                assert got["tokens"] == len(x) and got["non_finite_tokens"] == 0
                assert got["rel_l2_mean"] == pytest.approx(rel.mean().item(), rel=1e-9)
                assert got["rel_l2_p99"] == pytest.approx(torch.quantile(rel, 0.99, interpolation="higher").item(),
                                                        rel=1e-9)
                assert got["rel_l2_max"] == pytest.approx(rel.max().item(), rel=1e-9)
                assert got["cosine_min"] == pytest.approx(cos.min().item(), abs=1e-12)
                assert got["cosine_mean"] == pytest.approx(cos.mean().item(), abs=1e-12)
                assert 0 < got["rel_l2_max"] < 0.1
                everything.setdefault(name, []).append(rel)
    info = lossy.info()
    for name, parts in everything.items():
        rel = torch.cat(parts)
        agg = info["lossy_error"][name]
        assert agg["tokens"] == len(rel) == lossy.n_tokens
        assert agg["rel_l2_mean"] == pytest.approx(rel.mean().item(), rel=1e-9)
        assert agg["rel_l2_max"] == pytest.approx(rel.max().item(), rel=1e-9)
        assert agg["rel_l2_p99"] >= torch.quantile(rel, 0.99, interpolation="higher").item()  # an upper bound
    assert info["activation_bytes_raw"] == exact.info()["activation_bytes_raw"]
    assert info["activation_bytes_stored"] < 0.4 * info["activation_bytes_raw"]
    assert exact.info()["lossy_error"] == {}


def test_plain_zarr_reads_the_layout_of_format_md_and_outliers_are_exact(exact_and_fp8):
    """docs/FORMAT.md's recipe with zarr and torch alone (codes as float8_e4m3fn times the row's scale, each outlier
    value put back at its column) gives what the reader gives; the outlier columns are each row's largest
    magnitudes and hold the exact build's values bit for bit."""
    exact, lossy = open_cache(exact_and_fp8[0]), open_cache(exact_and_fp8[1])
    assert lossy.fingerprint.capture.outliers == OUTLIERS["fp8"]
    for record in lossy.commit_records():
        group = zarr.open_group(exact_and_fp8[1] / "segments" / record.segment, mode="r")
        keys = [d.key for d in record.documents]
        for hook in lossy.hooks:
            for layer in lossy.layers:
                codes = group[f"{hook}/layer_{layer}"]
                side = {kind: group[codes.attrs[f"actcache_{kind}"]][:] for kind in ("scale", "outlier_dims",
                                                                                   "outlier_values")}
                dims = torch.from_numpy(side["outlier_dims"].astype(np.int64))
                x = torch.from_numpy(codes[:]).view(torch.float8_e4m3fn).float() * torch.from_numpy(side["scale"])
                x = x.scatter(1, dims, torch.from_numpy(side["outlier_values"]))
                assert np.array_equal(x.numpy(), np.concatenate([lossy.activations(hook, layer, k) for k in keys]))
                want = torch.from_numpy(np.concatenate([exact.activations(hook, layer, k) for k in keys]))
                assert torch.equal(x.gather(1, dims), want.gather(1, dims))
                assert (want.abs().gather(1, dims).amin(1) >= want.abs().scatter(1, dims, 0).amax(1)).all()
