"""`actcache info`: the model's identity apart from the capture spec, label fields with their common values,
and a compression ratio over committed units only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from actcache import actcache_cli
from actcache.cache_builder.build import BuildSettings, build_cache
from actcache.storage import CacheWriter, DocRecord, open_cache
from actcache.storage.cli import format_info
from actcache.storage.layout import activation_name
from storage_fixtures import WrittenCache, make_fingerprint, write_unit


def _build(model: str, corpus: Path, out: Path, layers: str) -> dict:
    build_cache(BuildSettings(model=model, corpus=corpus, out=out, layers=layers, batch_size=4,
                              progress=False))
    return open_cache(out).info()


def test_the_model_digest_does_not_change_with_the_captured_layers(tiny_llama_dir, tmp_path, capsys) -> None:
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"text": f"sentence {i} about {topic}", "topic": topic, "split": "test" if i % 4 == 3 else "train"}
            for i, topic in enumerate(["cooking", "sports", "cooking", "cooking", "music", "sports"])]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    one = _build("tiny-llama", corpus, tmp_path / "one", "1")
    two = _build(str(tiny_llama_dir), corpus, tmp_path / "two", "1,3")  # the same model, by its folder
    assert one["model"]["digest"] == two["model"]["digest"]  # same weights + config
    assert one["cache_fingerprint"] != two["cache_fingerprint"]  # different capture spec
    assert one["model"]["name"] == two["model"]["name"] == "tiny-llama"
    assert one["model"]["architecture"] == "LlamaForCausalLM"
    assert (one["layers"], two["layers"]) == ([1], [1, 3])
    assert one["label_fields"]["topic"] == {"documents": 6, "distinct": 3,
                                            "most_common": [["cooking", 3], ["sports", 2], ["music", 1]]}
    assert one["label_fields"]["split"]["most_common"] == [["train", 5], ["test", 1]]
    assert actcache_cli.main(["info", str(tmp_path / "two")]) == 0
    text = capsys.readouterr().out
    assert f"digest {one['model']['digest']} (weights + config)" in text
    assert "capture      hooks resid_post [64]" in text and "             layers 1, 3\n" in text
    assert f"fingerprint  {two['cache_fingerprint']} (model + tokenizer + dtype + capture" in text
    assert "topic: cooking (3), sports (2), music (1) in 6 documents" in text
    assert actcache_cli.main(["info", "--json", str(tmp_path / "two")]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert as_json["model"] == two["model"] and as_json["label_fields"] == two["label_fields"]


def test_label_lists_count_each_value(tmp_path: Path) -> None:
    writer = CacheWriter.open(tmp_path / "c", make_fingerprint(layers=(1,)), {"name": "tiny"})
    docs = [DocRecord("a", 2, {"concept": ["cooking", "sports"]}), DocRecord("b", 2, {"concept": "cooking"}),
            DocRecord("c", 2, {})]
    segment = writer.begin_segment("u", docs, np.zeros(6, np.int32))
    rows = writer.segment_writer(segment)
    for hook, width in (("resid_post", 16), ("attn_z", 12)):
        rows.append(activation_name(hook, 1), np.ones((6, width), np.float32))
    assert writer.commit("u", segment, docs, rows.close())
    info = open_cache(tmp_path / "c").info()
    assert info["label_fields"] == {"concept": {"documents": 2, "distinct": 2,
                                                "most_common": [["cooking", 2], ["sports", 1]]}}
    assert info["model"]["name"] == "tiny" and "model:" not in format_info(info)


def test_uncommitted_segments_do_not_change_the_compression_ratio(written_cache: WrittenCache) -> None:
    before = open_cache(written_cache.path).info()
    writer = CacheWriter.open(written_cache.path, make_fingerprint())
    write_unit(writer, "unit-pending", [20000], np.random.default_rng(9), WrittenCache(written_cache.path, [], {}, {}),
               commit=False)
    after = open_cache(written_cache.path).info()
    assert after["compression_ratio"] == before["compression_ratio"]
    assert after["activation_bytes_stored"] == before["activation_bytes_stored"]
    assert after["uncommitted_segments"] == 1 and after["uncommitted_bytes"] > 20000 * 28 * 2 * 4 * 0.5
    assert after["bytes_on_disk"] >= before["bytes_on_disk"] + after["uncommitted_bytes"]
    assert "uncommitted  1 segment(s)" in format_info(after)
    writer.close()



def test_documents_stored_by_two_commits_are_counted(written_cache: WrittenCache, capsys) -> None:
    """The same document committed by two more units (writers without document claims): one document, and one
    duplicate in `info --json` and its text."""
    writer = CacheWriter.open(written_cache.path, make_fingerprint())
    twice = written_cache.docs[0]
    for unit in ("unit-again-1", "unit-again-2"):
        segment = writer.begin_segment(unit, [twice], written_cache.token_ids[twice.key])
        rows = writer.segment_writer(segment)
        for (hook, layer, key), values in written_cache.values.items():
            if key == twice.key:
                rows.append(activation_name(hook, layer), values)
        assert writer.commit(unit, segment, [twice], rows.close())
    writer.close()
    assert actcache_cli.main(["info", str(written_cache.path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["documents"], info["duplicate_documents"]) == (len(written_cache.docs), 1)
    assert "1 stored twice" in format_info(info)
