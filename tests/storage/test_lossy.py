"""Lossy storage modes: codes against torch's own conversions, the int8 bound, every reader path, the fingerprint
refusal, and the per-commit error records against an exact build of the same corpus."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from actcache.cache_builder.build import BuildSettings, build_cache
from actcache.storage import CacheWriter, FingerprintMismatchError, open_cache, verify_cache
from actcache.storage.cli import format_info
from actcache.storage.lossy import decode, encode, scale_name
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


def test_bfloat16_codes_are_torch_rounding_bit_for_bit():
    x = _rows()
    codes, scales = encode(x, "bfloat16")
    expected = torch.from_numpy(x).to(torch.bfloat16)
    assert scales is None
    assert np.array_equal(codes, expected.view(torch.int16).numpy().view(np.uint16))
    assert np.array_equal(decode(codes, None, "bfloat16"), expected.float().numpy())


def test_fp8_codes_are_torch_float8_e4m3fn_with_the_row_scales_bit_for_bit():
    x = _rows()
    codes, scales = encode(x, "fp8")
    xt = torch.from_numpy(x)
    absmax = xt.abs().amax(dim=1, keepdim=True)
    assert np.array_equal(scales, (absmax / 448).numpy())
    st = torch.from_numpy(scales)
    expected = (xt / torch.where(st == 0, 1, st)).to(torch.float8_e4m3fn)
    assert np.array_equal(codes, expected.view(torch.uint8).numpy())
    assert np.array_equal(decode(codes, scales, "fp8"), (expected.float() * st).numpy())
    every = np.arange(256, dtype=np.uint8)[:, None]
    assert np.array_equal(decode(every, np.ones((256, 1), np.float32), "fp8"),
                          torch.from_numpy(every).view(torch.float8_e4m3fn).float().numpy(), equal_nan=True)


def test_int8_stays_within_half_a_scale_of_every_value():
    x = _rows(1)
    codes, scales = encode(x, "int8")
    assert codes.dtype == np.int8 and codes.min() >= -127
    err = np.abs(decode(codes, scales, "int8") - x)
    # |x - code * scale| <= scale / 2, up to float32 rounding of x / scale and code * scale (|x| <= 127 scale)
    assert (err <= scales * (0.5 + 127 * 2.0 ** -22)).all()
    assert (np.abs(codes).max(axis=1)[scales[:, 0] > 0] == 127).all()  # the full range is used
    assert (decode(codes, scales, "int8")[3] == 0).all()


@pytest.mark.parametrize(("mode", "compute"), [(m, "float32") for m in MODES] + [("fp8", "bfloat16")])
def test_every_reader_path_returns_the_decoded_rows(tmp_path, mode, compute):
    fp = make_fingerprint(compute)
    fp = dataclasses.replace(fp, capture=dataclasses.replace(fp.capture, store_as=mode))
    out = WrittenCache(tmp_path / "c", [], {}, {})
    with CacheWriter.open(out.path, fp) as writer:
        rng = np.random.default_rng(0)
        write_unit(writer, "u1", [300, 5, 900], rng, out)
        write_unit(writer, "u2", [40, 2000], rng, out)
    cache = open_cache(out.path)
    assert cache.store_as == mode
    docs = cache.documents()
    exact = {k: (v.astype(np.uint32) << 16).view(np.float32) if compute == "bfloat16" else v  # bf16 bits widened
             for k, v in out.values.items()}
    expected = {k: decode(*encode(v, mode), mode) for k, v in exact.items()}
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
    assert set(info["lossy_error"]) == {f"{h}/layer_{layer}" for h in WIDTHS for layer in (1, 3)}
    text = format_info(info)
    assert f"stored as {mode} (lossy)" in text and "lossy error  attn_z/layer_1: rel. L2 mean" in text


def test_a_missing_scale_chunk_is_refused_not_read_as_nan(tmp_path):
    fp = make_fingerprint()
    fp = dataclasses.replace(fp, capture=dataclasses.replace(fp.capture, store_as="fp8"))
    out = WrittenCache(tmp_path / "c", [], {}, {})
    with CacheWriter.open(out.path, fp) as writer:
        write_unit(writer, "u1", [30, 50], np.random.default_rng(0), out)
    segment = next(p for p in (out.path / "segments").iterdir() if p.is_dir())
    (segment / scale_name("resid_post", 1) / "c" / "0" / "0").unlink()
    with pytest.raises(Exception, match="missing"):
        open_cache(out.path).activations("resid_post", 1, "u1-doc0")
    assert not verify_cache(out.path).ok


def test_a_mixed_mode_append_is_refused_naming_the_field(tmp_path):
    exact = make_fingerprint()
    with CacheWriter.open(tmp_path / "c", exact):
        pass
    fp8 = dataclasses.replace(exact, capture=dataclasses.replace(exact.capture, store_as="fp8"))
    with pytest.raises(FingerprintMismatchError, match=r"capture\.store_as"):
        CacheWriter.open(tmp_path / "c", fp8)
    assert exact.digest == make_fingerprint().digest  # an exact spec keeps the digest caches had before lossy modes


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
