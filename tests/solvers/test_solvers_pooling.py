"""Pooling parse and apply, with the edge cases: short documents, bad strings, dtypes."""

from __future__ import annotations

import pytest
import torch
from actcache.solvers import Pooling, parse_pooling
from actcache.storage.pooled import PoolingError


@pytest.mark.parametrize("text", ["last", "mean", "mean-skip:0", "mean-skip:3", "span:0:1", "span:2:5"])
def test_parse_round_trips(text):
    assert str(parse_pooling(text)) == text


@pytest.mark.parametrize(
    "text", ["", "first", "mean-skip", "mean-skip:-1", "span:3:3", "span:4:2", "span:a:b", "last:1", "span:1"]
)
def test_parse_rejects_bad_strings(text):
    with pytest.raises(PoolingError, match="bad pooling"):
        parse_pooling(text)


def test_values():
    h = torch.arange(12, dtype=torch.float32).reshape(4, 3)  # rows 0..3
    assert torch.equal(parse_pooling("last")(h), h[3])
    assert torch.allclose(parse_pooling("mean")(h), h.mean(0))
    assert torch.allclose(parse_pooling("mean-skip:1")(h), h[1:].mean(0))
    assert torch.allclose(parse_pooling("mean-skip:3")(h), h[3])
    assert torch.allclose(parse_pooling("span:1:3")(h), h[1:3].mean(0))
    assert torch.allclose(parse_pooling("span:0:4")(h), h.mean(0))


def test_single_token_document():
    h = torch.randn(1, 5)
    assert torch.equal(parse_pooling("last")(h), h[0])
    assert torch.equal(parse_pooling("mean")(h), h[0])
    assert torch.equal(parse_pooling("span:0:1")(h), h[0])


@pytest.mark.parametrize(("text", "n_tok", "need"), [("mean-skip:3", 3, 4), ("span:2:6", 5, 6), ("last", 0, 1)])
def test_too_short_document_names_it(text, n_tok, need):
    with pytest.raises(PoolingError, match=rf"document paired/s1/joy has {n_tok} tokens .* needs {need}"):
        parse_pooling(text)(torch.zeros(n_tok, 4), "paired/s1/joy")


def test_half_precision_is_averaged_in_float32():
    h = torch.full((3000, 2), 1.0009765625, dtype=torch.float16)  # sum overflows float16 precision
    pooled = Pooling("mean")(h)
    assert pooled.dtype == torch.float32
    assert torch.allclose(pooled, torch.full((2,), 1.0009765625))


def test_rejects_non_matrix():
    with pytest.raises(PoolingError, match="expected a \\[n_tokens, width\\] matrix"):
        Pooling("last")(torch.zeros(2, 3, 4), "k")
