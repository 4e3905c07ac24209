"""chitchat-dataset -> chat JSONL: roles alternate, each ends on the assistant, the seed fixes the split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from training.chitchat import (
    ChitchatError,
    convert,
    load_corpus,
    main,
    split_conversations,
    to_chat,
    trim,
    turns_of,
)


@pytest.fixture(scope="module")
def corpus() -> dict[str, Any]:
    return load_corpus()


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_roles_alternate_and_end_on_the_assistant(corpus: dict[str, Any], tmp_path: Path) -> None:
    train, valid = convert(tmp_path, 12, 4, seed=3, min_turns=4, max_turns=6, max_chars=500, corpus=corpus)
    rows = _read(train) + _read(valid)
    assert len(_read(train)) == 12 and len(_read(valid)) == 4
    for row in rows:
        roles = [m["role"] for m in row["messages"]]
        assert 4 <= len(roles) <= 6 and len(roles) % 2 == 0
        assert sum(len(m["content"]) for m in row["messages"]) <= 500
        assert roles == ["user", "assistant"] * (len(roles) // 2)
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in row["messages"])


def test_split_is_fixed_by_the_seed(corpus: dict[str, Any], tmp_path: Path) -> None:
    a = convert(tmp_path / "a", 8, 3, seed=7, corpus=corpus)
    b = convert(tmp_path / "b", 8, 3, seed=7, corpus=corpus)
    c = convert(tmp_path / "c", 8, 3, seed=8, corpus=corpus)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert a[0].read_bytes() != c[0].read_bytes()
    train_texts = {json.dumps(r) for r in _read(a[0])}
    assert not train_texts & {json.dumps(r) for r in _read(a[1])}  # train and valid are disjoint
    # The seed alone decides: the corpus's dict order does not matter.
    reordered = dict(reversed(list(corpus.items())))
    assert split_conversations(reordered, 8, 3, 7) == split_conversations(corpus, 8, 3, 7)


def test_real_record_becomes_alternating_turns(corpus: dict[str, Any]) -> None:
    key = sorted(corpus)[0]
    record = corpus[key]
    turns = turns_of(record)
    senders = [turn[0]["sender"] for turn in record["messages"]]
    assert len(turns) == len(senders) and all(a != b for a, b in zip(senders, senders[1:], strict=False))
    assert turns[0] == "\n".join(u["text"].strip() for u in record["messages"][0])


def test_same_sender_turns_merge_and_empty_text_drops() -> None:
    record = {
        "messages": [
            [{"text": "hi", "sender": "a"}, {"text": " there ", "sender": "a"}],
            [{"text": "  ", "sender": "b"}],
            [{"text": "again", "sender": "a"}],
            [{"text": "yo", "sender": "b"}],
        ]
    }
    assert turns_of(record) == ["hi\nthere\nagain", "yo"]


def test_trim_keeps_whole_pairs_within_limits() -> None:
    turns = ["aaaa", "bbbb", "cccc", "dddd", "e"]
    assert trim(turns) == turns[:4]
    assert trim(turns, max_turns=3) == turns[:2]
    assert trim(turns, max_chars=10) == turns[:2]
    assert trim(turns, max_chars=1) == []  # even the first pair is too long: left out
    assert trim(["only one"]) == []


def test_system_prompt_goes_first() -> None:
    chat = to_chat(["hi", "hello"], system="Be brief.")
    assert [m["role"] for m in chat["messages"]] == ["system", "user", "assistant"]


def test_bad_requests_are_refused(corpus: dict[str, Any]) -> None:
    with pytest.raises(ChitchatError, match="only"):
        split_conversations(corpus, 7000, 100, 0, min_turns=10)
    with pytest.raises(ChitchatError, match="min_turns"):
        split_conversations(corpus, 5, 1, 0, min_turns=1)
    with pytest.raises(ChitchatError, match="train >= 1"):
        split_conversations(corpus, 0, 1, 0)


def test_output_passes_the_dataset_validator(corpus: dict[str, Any], tmp_path: Path) -> None:
    datasets = pytest.importorskip("rules.datasets")
    train, valid = convert(tmp_path, 10, 3, seed=0, corpus=corpus)
    reports = [datasets.validate_file(train), datasets.validate_file(valid)]
    assert all(r.ok and r.format == "chat" for r in reports), [r.describe() for r in reports]
    assert datasets.check_pair(*reports) == []


def test_cli_writes_both_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["--out", str(tmp_path), "--train", "5", "--valid", "2", "--seed", "1", "--max-chars", "400"])
        == 0
    )
    assert len(_read(tmp_path / "train.jsonl")) == 5 and len(_read(tmp_path / "valid.jsonl")) == 2
    assert main(["--out", str(tmp_path), "--train", "5", "--valid", "2", "--min-turns", "1"]) == 1
    assert "min_turns" in capsys.readouterr().err
