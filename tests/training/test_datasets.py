"""rules.datasets: each problem names the line and what is wrong; good files give the right summary."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from rules.datasets import (
    MAX_CLASSES,
    DatasetReport,
    Problem,
    check_pair,
    check_training,
    validate_file,
    validate_lines,
)

SST2_DEV = Path("/work/shared/data/sst2/dev.jsonl")


def lines(*records: object) -> list[bytes]:
    return [(r if isinstance(r, str) else json.dumps(r)).encode() + b"\n" for r in records]


def report(*records: object, **kw: int) -> DatasetReport:
    return validate_lines(lines(*records), "train.jsonl", **kw)


def test_sst2_slice_is_valid_classification() -> None:
    with SST2_DEV.open("rb") as fh:
        rep = validate_lines([next(fh) for _ in range(50)], "dev.jsonl")
    assert rep.ok and rep.format == "classification" and rep.examples == 50
    assert rep.label_kind == "int" and rep.labels == ["0", "1"]
    assert "50 classification examples" in rep.describe()


def test_validate_file_reads_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"".join(lines({"text": "a", "label": "pos"}, {"text": "b", "label": "neg"})))
    rep = validate_file(path)
    assert rep.ok and rep.filename == "x.jsonl" and rep.labels == ["neg", "pos"] and rep.label_kind == "str"


def test_int_labels_sort_numerically_and_pairs_are_accepted() -> None:
    recs = [{"text": "a", "text_pair": "b", "label": n} for n in (10, 2, 1)]
    rep = report(*recs)
    assert rep.ok and rep.labels == ["1", "2", "10"]


def test_floats_make_a_regression_file_ints_included() -> None:
    rep = report({"text": "a", "label": 1}, {"text": "b", "label": 3.5}, {"text": "c", "label": 0})
    assert rep.ok and rep.label_kind == "float" and rep.labels == []


@pytest.mark.parametrize(
    ("records", "line", "needle"),
    [
        (['{"text": "a", "label": 0', {"text": "b", "label": 1}], 1, "invalid JSON"),
        ([{"text": "a", "label": 0}, "[1, 2]"], 2, "expected a JSON object, got a list"),
        ([{"text": "a", "label": 0}, {"text": "b"}], 2, "missing key 'label'"),
        ([{"text": 3, "label": 0}, {"text": "b", "label": 1}], 1, "'text' must be a string, got a number"),
        ([{"text": "   ", "label": 0}, {"text": "b", "label": 1}], 1, "'text' is empty"),
        ([{"text": "a", "label": True}, {"text": "b", "label": 1}], 1, "'label' must be an integer"),
        (
            [{"text": "a", "label": 0}, {"text": "b", "label": "pos"}],
            2,
            "label 'pos' is string but line 1 has integer labels",
        ),
        ([{"text": "a", "label": 0}, {"text": "b", "text_pair": "c", "label": 1}], 2, "'text_pair' present"),
        ([{"foo": 1}], 1, "unknown format"),
        ([{"text": "a", "label": 0}, {"messages": [{"role": "user", "content": "hi"}]}], 2, "use one format"),
        ([{"messages": [{"role": "robot", "content": "x"}]}], 1, "unknown role 'robot'"),
        ([{"messages": [{"role": "user", "content": ""}]}], 1, "messages[0]: 'content' is empty"),
        ([{"messages": [{"role": "user"}]}], 1, "messages[0]: missing key 'content'"),
        ([{"messages": "hi"}], 1, "'messages' must be a list"),
        ([{"messages": [{"role": "user", "content": "hi"}]}], 1, "no assistant message"),
        ([{"prompt": "p", "completion": ""}], 1, "'completion' is empty"),
        ([{"prompt": 5, "completion": "c"}], 1, "'prompt' must be a string"),
        ([{"completion": "c"}], 1, "missing key 'prompt'"),
    ],
)
def test_each_problem_names_line_and_cause(records: list[object], line: int, needle: str) -> None:
    rep = report(*records)
    assert not rep.ok
    assert any(p.line == line and needle in p.message for p in rep.problems), rep.problems
    assert f"train.jsonl: line {line}: " in rep.describe() or rep.describe().startswith("train.jsonl: ")


def test_not_utf8_names_the_line_and_byte() -> None:
    raw = [b'{"text": "ok", "label": 0}\n', b'{"text": "caf\xe9", "label": 1}\n']
    rep = validate_lines(raw, "t.jsonl")
    assert rep.problems[0].line == 2 and "not valid UTF-8" in rep.problems[0].message
    assert "0xe9" in rep.problems[0].message


def test_utf16_is_reported_once() -> None:
    data = ('{"text": "a", "label": 0}\n' * 5).encode("utf-16")
    rep = validate_lines(data.splitlines(keepends=True), "t.jsonl")
    assert len(rep.problems) == 1 and "UTF-16" in rep.problems[0].message


def test_utf8_bom_and_blank_lines_are_fine() -> None:
    raw = [b'\xef\xbb\xbf{"text": "a", "label": 0}\n', b"\n", b'{"text": "b", "label": 1}\n']
    assert validate_lines(raw, "t.jsonl").ok


def test_empty_file_and_too_few_examples() -> None:
    assert validate_lines([], "e.jsonl").describe() == "e.jsonl: the file is empty"
    assert validate_lines([b"\n", b"  \n"], "e.jsonl").problems == [Problem(0, "the file is empty")]
    rep = report({"text": "a", "label": 0}, {"text": "b", "label": 1}, min_examples=5)
    assert "only 2 example(s); at least 5 needed" in rep.describe()


def test_single_label_is_refused_for_training_only() -> None:
    rep = report({"text": "a", "label": 1}, {"text": "b", "label": 1})
    assert rep.ok  # fine as a validation file
    assert "two labels or more" in check_training(rep)[0].message
    assert check_training(report({"text": "a", "label": 1}, {"text": "b", "label": 2})) == []


def test_problems_are_capped_and_counted() -> None:
    rep = report(*(["{bad"] * 30), max_problems=5)
    assert len(rep.problems) == 5 and rep.more_problems == 25
    assert "and 25 more problem(s)" in rep.describe()


def test_chat_and_prompt_completion_formats() -> None:
    chat = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello", "weight": 1},
        ]
    }
    rep = report(chat, chat)
    assert rep.ok and rep.format == "chat" and rep.examples == 2 and rep.label_kind is None
    rep = report({"prompt": "", "completion": "x"})
    assert rep.ok and rep.format == "prompt_completion"


def test_round_trip_through_dict() -> None:
    rep = report({"text": "a", "label": 0}, "{bad")
    again = DatasetReport.from_dict(json.loads(json.dumps(rep.to_dict())))
    assert again == rep and again.describe() == rep.describe()


def test_check_pair_unseen_label_kind_and_format() -> None:
    train = report({"text": "a", "label": "pos"}, {"text": "b", "label": "neg"})
    valid = validate_lines(lines({"text": "a", "label": "pos"}, {"text": "b", "label": "meh"}), "valid.jsonl")
    assert "'meh'" in check_pair(train, valid)[0].message
    ints = validate_lines(lines({"text": "a", "label": 0}, {"text": "b", "label": 1}), "valid.jsonl")
    assert "has integer labels but train.jsonl has string labels" in check_pair(train, ints)[0].message
    chat = validate_lines(
        lines({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}),
        "v.jsonl",
    )
    assert "chat data" in check_pair(train, chat)[0].message
    floats = report({"text": "a", "label": 0.5}, {"text": "b", "label": 2.0})
    assert check_pair(floats, ints) == []
    assert check_pair(train, train) == []


def test_classification_labels_are_capped_naming_the_line_count_and_fix() -> None:
    at_cap = report(*({"text": "t", "label": n} for n in range(MAX_CLASSES)))
    assert at_cap.ok and len(at_cap.labels) == MAX_CLASSES
    strings = [{"text": "t", "label": f"c{n}"} for n in range(MAX_CLASSES)] + [{"text": "t", "label": "c0"}]
    assert report(*strings).ok  # a repeated label is no new class
    over = report(*({"text": "t", "label": n} for n in range(MAX_CLASSES + 5)))
    assert [p.line for p in over.problems] == [MAX_CLASSES + 1]
    message = over.problems[0].message
    assert f"more than {MAX_CLASSES} distinct labels" in message and "regression" in message
    assert len(over.labels) <= MAX_CLASSES  # memory stays bounded while scanning


def test_regression_files_have_no_label_cap_and_store_no_labels() -> None:
    rep = report(*({"text": "t", "label": n + 0.5} for n in range(3 * MAX_CLASSES)))
    assert rep.ok and rep.label_kind == "float" and rep.labels == []
    ints_first = report(
        *({"text": "t", "label": n} for n in range(2 * MAX_CLASSES)), {"text": "t", "label": 0.5}
    )
    assert ints_first.ok and ints_first.label_kind == "float"


def test_check_pair_is_linear_in_the_labels() -> None:
    """Reports stored before the cap may hold any number of labels: 50,000 unseen ones take one pass (the
    set of training labels was rebuilt per validation label: 2.5e9 steps)."""
    n = 50_000
    train = DatasetReport("train.jsonl", "classification", n, "int", [str(i) for i in range(n)], [])
    valid = DatasetReport("valid.jsonl", "classification", n, "int", [str(i + n) for i in range(n)], [])
    started = time.perf_counter()
    problems = check_pair(train, valid)
    assert time.perf_counter() - started < 1.0
    assert len(problems) == 1 and f"'{n}'" in problems[0].message
