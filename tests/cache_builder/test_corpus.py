"""Corpus loaders on small corpora written here, the bundled demo corpus, the sentiment data, and bad input."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import pytest
from actcache.cache_builder.corpus import (
    DEMO_CORPUS,
    CorpusError,
    CorpusWarning,
    Document,
    load_corpus,
)

SENTIMENT = Path(__file__).resolve().parent.parent / "data" / "sentiment.jsonl"


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def load_quietly(path: Path) -> list[Document]:
    """Load and fail on any warning: a clean corpus must load without skipping anything."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_corpus(path)


# --- story layout -------------------------------------------------------------------------------------------


def test_story_layout_labels_and_order(tmp_path: Path) -> None:
    write(tmp_path / "stories/joy.txt", "She laughed.\n\n\n  \nHe danced\nall night.  \n")
    write(tmp_path / "paired/park/fear.txt", "A dog growled.\n")
    write(tmp_path / "paired/park/baseline.txt", "\nPeople walked.\n\nA bench stood.\n\n")

    docs = load_quietly(tmp_path)

    assert [(d.text, d.meta) for d in docs] == [
        ("People walked.", {"scenario": "park", "role": "baseline", "source": "paired/park/baseline.txt", "index": 0}),
        ("A bench stood.", {"scenario": "park", "role": "baseline", "source": "paired/park/baseline.txt", "index": 1}),
        (
            "A dog growled.",
            {"concept": "fear", "scenario": "park", "role": "positive", "source": "paired/park/fear.txt", "index": 0},
        ),
        ("She laughed.", {"concept": "joy", "role": "positive", "source": "stories/joy.txt", "index": 0}),
        ("He danced\nall night.", {"concept": "joy", "role": "positive", "source": "stories/joy.txt", "index": 1}),
    ]


def test_story_layout_with_only_stories_and_stray_file(tmp_path: Path) -> None:
    write(tmp_path / "stories/calm.txt", "Still water.")
    write(tmp_path / "notes/README.txt", "not a story")

    with pytest.warns(CorpusWarning, match=r"notes/README\.txt: not in stories/ or paired/<scenario>/.*move it"):
        docs = load_corpus(tmp_path)

    assert [d.meta["source"] for d in docs] == ["stories/calm.txt"]


def test_story_crlf_and_bom_are_normalised(tmp_path: Path) -> None:
    write(tmp_path / "stories/pride.txt", "\ufeffFirst.\r\n\r\nSecond.\r\n".encode())

    docs = load_quietly(tmp_path)

    assert [d.text for d in docs] == ["First.", "Second."]


# --- JSONL --------------------------------------------------------------------------------------------------


def test_jsonl_fields_become_meta(tmp_path: Path) -> None:
    path = write(
        tmp_path / "data.jsonl",
        '{"text": "Great film.", "sentiment": "positive", "split": "train"}\n'
        "\n"
        '{"text": " Awful. ", "sentiment": "negative", "tags": ["a", 1], "score": 0.5}\n',
    )

    docs = load_quietly(path)

    assert [(d.text, d.meta) for d in docs] == [
        ("Great film.", {"sentiment": "positive", "split": "train", "source": "data.jsonl", "index": 1}),
        (" Awful. ", {"sentiment": "negative", "tags": ["a", 1], "score": 0.5, "source": "data.jsonl", "index": 3}),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": "ok", }', r"bad\.jsonl:2: not valid JSON .*write one JSON object per line"),
        ('{"label": "positive"}', r'bad\.jsonl:2: no string field "text"; every line needs'),
        ('{"text": 42}', r'bad\.jsonl:2: no string field "text"'),
        ('["text", "x"]', r"bad\.jsonl:2: expected a JSON object, got list"),
        ('{"text": "x", "source": "web"}', r"bad\.jsonl:2: field\(s\) \['source'\] are set by the loader; rename"),
    ],
)
def test_jsonl_bad_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path / "bad.jsonl", '{"text": "fine"}\n' + line + "\n")

    with pytest.raises(CorpusError, match=message):
        load_corpus(path)


def test_jsonl_empty_text_is_skipped_with_warning(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"text": "kept"}\n{"text": "  "}\n')

    with pytest.warns(CorpusWarning, match=r"d\.jsonl \(index 2\): empty document, skipped"):
        docs = load_corpus(path)

    assert [d.text for d in docs] == ["kept"]


# --- plain text ---------------------------------------------------------------------------------------------


def test_text_folder_one_document_per_file(tmp_path: Path) -> None:
    write(tmp_path / "b.txt", "  Second file.\n")
    write(tmp_path / "a.txt", "First file.\n\nStill the first document.")
    write(tmp_path / "sub/c.txt", "Nested.")
    write(tmp_path / ".hidden/d.txt", "Never read.")
    write(tmp_path / "notes.md", "Not text corpus.")

    docs = load_quietly(tmp_path)

    assert [(d.text, d.meta) for d in docs] == [
        ("First file.\n\nStill the first document.", {"source": "a.txt"}),
        ("Second file.", {"source": "b.txt"}),
        ("Nested.", {"source": "sub/c.txt"}),
    ]


def test_single_text_file(tmp_path: Path) -> None:
    path = write(tmp_path / "one.txt", "Just this.\n")

    assert [(d.text, d.meta) for d in load_quietly(path)] == [("Just this.", {"source": "one.txt"})]


# --- bad input ----------------------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"nowhere does not exist; pass an existing folder or \.jsonl/\.txt file"):
        load_corpus(tmp_path / "nowhere")


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"no corpus layout recognised; use stories/ \+ paired/<scenario>/ folders"):
        load_corpus(tmp_path)


def test_unknown_file_type(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", "text\nhello\n")

    with pytest.raises(CorpusError, match="no corpus layout recognised"):
        load_corpus(path)


def test_non_utf8_file_is_skipped_with_fix(tmp_path: Path) -> None:
    write(tmp_path / "good.txt", "Readable.")
    write(tmp_path / "bad.txt", b"\xff\xfeH\x00i\x00")

    with pytest.warns(CorpusWarning, match=r"bad\.txt: not valid UTF-8 .*re-encode the file as UTF-8"):
        docs = load_corpus(tmp_path)

    assert [d.meta["source"] for d in docs] == ["good.txt"]


def test_non_utf8_story_file_only_leaves_no_documents(tmp_path: Path) -> None:
    write(tmp_path / "stories/joy.txt", b"\xff\xfej\x00o\x00y\x00")

    with pytest.warns(CorpusWarning, match=r"stories/joy\.txt: not valid UTF-8"):
        with pytest.raises(CorpusError, match="the story corpus has no non-empty documents; add text to it"):
            load_corpus(tmp_path)


def test_empty_story_file_is_skipped_with_index(tmp_path: Path) -> None:
    write(tmp_path / "stories/joy.txt", "A happy day.")
    write(tmp_path / "stories/fear.txt", "\n   \n\n")

    with pytest.warns(CorpusWarning, match=r"stories/fear\.txt \(index 0\): empty document, skipped"):
        docs = load_corpus(tmp_path)

    assert [d.meta["concept"] for d in docs] == ["joy"]


def test_empty_text_document_is_skipped(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "Some text.")
    write(tmp_path / "empty.txt", " \n\t\n")

    with pytest.warns(CorpusWarning, match=r"empty\.txt: empty document, skipped; remove it or add text"):
        docs = load_corpus(tmp_path)

    assert [d.meta["source"] for d in docs] == ["a.txt"]


# --- Document -----------------------------------------------------------------------------------------------


def test_document_round_trip_and_validation() -> None:
    doc = Document("Hello.", {"concept": "joy", "index": 3})

    assert Document.from_dict(json.loads(json.dumps(doc.to_dict()))) == doc
    with pytest.raises(CorpusError, match="not a document"):
        Document.from_dict({"meta": {}})


# --- bundled data -------------------------------------------------------------------------------------------


def test_demo_corpus() -> None:
    docs = load_quietly(DEMO_CORPUS)

    assert all(d.text.strip() == d.text and d.text for d in docs)
    json.dumps([d.meta for d in docs])  # labels are JSON-able
    concepts = {d.meta["concept"] for d in docs if "scenario" not in d.meta}
    assert len(concepts) >= 10
    for concept in concepts:
        assert sum(d.meta.get("concept") == concept and "scenario" not in d.meta for d in docs) >= 5

    scenarios = {d.meta["scenario"] for d in docs if "scenario" in d.meta}
    assert len(scenarios) >= 3
    for scenario in scenarios:
        inside = [d for d in docs if d.meta.get("scenario") == scenario]
        assert 4 <= sum(d.meta["role"] == "baseline" for d in inside) <= 6
        per_concept = Counter(d.meta["concept"] for d in inside if d.meta["role"] == "positive")
        assert set(per_concept) == concepts, scenario
        assert all(3 <= n <= 4 for n in per_concept.values()), (scenario, per_concept)

    assert len({d.text for d in docs}) == len(docs), "duplicate stories"
    words = sum(len(d.text.split()) for d in docs)
    assert 6_000 <= words <= 12_000  # about 10-15k tokens: small enough for the CPU demo


def test_sentiment_data() -> None:
    docs = load_quietly(SENTIMENT)

    assert 140 <= len(docs) <= 180
    assert {d.meta["sentiment"] for d in docs} == {"positive", "negative"}
    for split in ("train", "test"):
        counts = Counter(d.meta["sentiment"] for d in docs if d.meta["split"] == split)
        assert counts["positive"] == counts["negative"] > 0, (split, counts)
    n_test = sum(d.meta["split"] == "test" for d in docs)
    assert 0.2 <= n_test / len(docs) <= 0.3
    assert len({d.text for d in docs}) == len(docs)
