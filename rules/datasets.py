"""Validate fine-tuning JSONL files before any training: every problem names the file, the line and the fix.

Pure Python (no torch): the API runs it on upload, the training engine again before it trains.

Formats, one JSON object a line (blank lines are ignored):
- classification: `{"text": str, "label": int | str | float}` or with a second segment `"text_pair": str`.
  Labels are all ints, all strings (mapped to ids in sorted order; at most MAX_CLASSES distinct ones) or
  numbers with at least one float (regression; ints are read as floats there, so they must fit one).
- chat: `{"messages": [{"role": "system"|"user"|"assistant", "content": str, "weight"?: 0|1}, ...]}` (the
  OpenAI chat fine-tuning format); at least one assistant message, the part that is learnt.
- prompt_completion: `{"prompt": str, "completion": str}`; the completion is learnt.

Token-level checks (too long, nothing left after truncation) need the tokenizer and run in training.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Format = Literal["classification", "chat", "prompt_completion"]
LabelKind = Literal["int", "str", "float"]
TASK_OF_FORMAT: dict[str, str] = {
    "classification": "classification",
    "chat": "causal_lm",
    "prompt_completion": "causal_lm",
}
ROLES = ("system", "user", "assistant")
KIND_WORDS = {"int": "integer", "str": "string", "float": "numeric (regression)"}
FORMAT_HELP = "expected {'text', 'label'} (classification), {'messages'} (chat) or {'prompt', 'completion'}"
# Distinct integer or string labels a classification file may have: each is a class (an output of the
# head), and the file's report stores them all. Regression files (numeric labels, one float or more) have
# no such limit: their labels are not stored.
MAX_CLASSES = 1000


@dataclass
class Problem:
    line: int  # 1-based line number; 0 means the whole file
    message: str


@dataclass
class DatasetReport:
    filename: str
    format: Format | None
    examples: int
    label_kind: LabelKind | None
    labels: list[str]  # distinct labels (as strings) for int/str labels, sorted
    problems: list[Problem]  # at most max_problems
    more_problems: int = 0  # problems found beyond those listed

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        """One human line: "train.jsonl: line 3: missing key 'label'; line 9: ..." or a summary when ok."""
        if self.ok:
            kind = f", {self.label_kind} labels" if self.label_kind else ""
            return f"{self.filename}: {self.examples} {self.format} examples{kind}"
        parts = [p.message if p.line == 0 else f"line {p.line}: {p.message}" for p in self.problems]
        if self.more_problems:
            parts.append(f"and {self.more_problems} more problem(s)")
        return f"{self.filename}: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, stored on the file row."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetReport:
        return cls(
            filename=str(d["filename"]),
            format=d.get("format"),
            examples=int(d.get("examples", 0)),
            label_kind=d.get("label_kind"),
            labels=[str(x) for x in d.get("labels", [])],
            problems=[Problem(int(p["line"]), str(p["message"])) for p in d.get("problems", [])],
            more_problems=int(d.get("more_problems", 0)),
        )


def format_of(record: dict[str, Any]) -> Format | None:
    """Which format a JSON object is written in, from its keys (None: none of them)."""
    if "messages" in record:
        return "chat"
    if "prompt" in record or "completion" in record:
        return "prompt_completion"
    if "text" in record or "label" in record:
        return "classification"
    return None


def label_kind_of(label: Any) -> LabelKind | None:
    """'int', 'str' or 'float' for a usable label value; None for anything else (bool, null, list...)."""
    if isinstance(label, bool):
        return None
    if isinstance(label, int):
        return "int"
    if isinstance(label, float):
        return "float" if math.isfinite(label) else None
    if isinstance(label, str):
        return "str"
    return None


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _text_problem(record: dict[str, Any], key: str) -> str | None:
    if key not in record:
        return f"missing key {key!r}"
    value = record[key]
    if not isinstance(value, str):
        return f"{key!r} must be a string, got {_type_name(value)}"
    if not value.strip():
        return f"{key!r} is empty"
    return None


def _classification_problems(record: dict[str, Any]) -> list[str]:
    out = [p for p in (_text_problem(record, "text"),) if p]
    if "text_pair" in record and (p := _text_problem(record, "text_pair")):
        out.append(p)
    if "label" not in record:
        out.append("missing key 'label'")
    elif label_kind_of(record["label"]) is None:
        out.append(
            f"'label' must be an integer, a string or a finite number, got {_type_name(record['label'])}"
        )
    elif isinstance(record["label"], str) and not record["label"].strip():
        out.append("'label' is an empty string")
    return out


def _chat_problems(record: dict[str, Any]) -> list[str]:
    messages = record["messages"]
    if not isinstance(messages, list):
        return [f"'messages' must be a list of {{'role', 'content'}} objects, got {_type_name(messages)}"]
    if not messages:
        return ["'messages' is empty"]
    out: list[str] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            out.append(f"{where} must be an object with 'role' and 'content', got {_type_name(msg)}")
            continue
        role = msg.get("role")
        if "role" not in msg:
            out.append(f"{where}: missing key 'role'")
        elif role not in ROLES:
            out.append(f"{where}: unknown role {role!r}; use one of {', '.join(ROLES)}")
        if (p := _text_problem(msg, "content")) is not None:
            out.append(f"{where}: {p}")
        if "weight" in msg and (msg["weight"] not in (0, 1) or isinstance(msg["weight"], bool)):
            out.append(f"{where}: 'weight' must be 0 or 1")
    if not out and not any(m.get("role") == "assistant" and m.get("weight", 1) == 1 for m in messages):
        out.append("no assistant message (with weight 1): there is nothing to learn in this conversation")
    return out


def _prompt_completion_problems(record: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if "prompt" not in record:
        out.append("missing key 'prompt'")
    elif not isinstance(record["prompt"], str):
        out.append(f"'prompt' must be a string, got {_type_name(record['prompt'])}")
    if p := _text_problem(record, "completion"):
        out.append(p)
    return out


CHECKS = {
    "classification": _classification_problems,
    "chat": _chat_problems,
    "prompt_completion": _prompt_completion_problems,
}


@dataclass
class _Scan:
    """State carried across lines while validating one file."""

    filename: str
    max_problems: int
    problems: list[Problem] = field(default_factory=list)
    more: int = 0
    format: Format | None = None
    format_line: int = 0
    kind: LabelKind | None = None
    kind_line: int = 0
    pair: bool | None = None
    pair_line: int = 0
    labels: set[Any] = field(default_factory=set)  # int/str labels only, at most MAX_CLASSES + 1
    too_many_line: int = 0  # the line of the first label past MAX_CLASSES distinct ones
    huge_int_line: int = 0  # the first integer label too large for a float (a problem in regression)
    examples: int = 0

    def add(self, line: int, message: str) -> None:
        if len(self.problems) < self.max_problems:
            self.problems.append(Problem(line, message))
        else:
            self.more += 1

    def label(self, n: int, label: Any) -> bool:
        """Track label kinds; False (and a problem) when this label's kind clashes with earlier ones."""
        kind = label_kind_of(label)
        assert kind is not None
        numeric = ("int", "float")
        if self.kind is None:
            self.kind, self.kind_line = kind, n
        elif kind != self.kind and not (kind in numeric and self.kind in numeric):
            self.add(
                n,
                f"label {label!r} is {KIND_WORDS[kind]} but line {self.kind_line} has "
                f"{KIND_WORDS[self.kind]} labels; use one kind of label in a file",
            )
            return False
        elif kind == "float" and self.kind == "int":
            self.kind = "float"  # a single float makes the file a regression file; ints read as floats
            self.labels.clear()  # regression labels are not classes: nothing to keep
        if kind == "int" and not self.huge_int_line and not _fits_float(label):
            self.huge_int_line = n
        if self.kind != "float" and label not in self.labels:
            if len(self.labels) < MAX_CLASSES:
                self.labels.add(label)
            elif not self.too_many_line:
                self.too_many_line = n
        return True

    def finish(self) -> None:
        """Problems that only the whole file shows (its label kind is known at its end)."""
        if self.kind == "float" and self.huge_int_line:
            self.add(
                self.huge_int_line,
                "label is an integer too large for a number (this file has float labels, so it is a "
                "regression file and its labels are read as floats); write a smaller number",
            )
        elif self.kind in ("int", "str") and self.too_many_line:
            self.add(
                self.too_many_line,
                f"more than {MAX_CLASSES} distinct labels (this line has label number {MAX_CLASSES + 1}); "
                f"a classification file may have at most {MAX_CLASSES} classes: use numeric labels with "
                "a decimal point for regression, or fewer classes",
            )

    def record(self, n: int, record: dict[str, Any]) -> None:
        fmt = format_of(record)
        if fmt is None:
            keys = ", ".join(repr(k) for k in list(record)[:8]) or "none"
            self.add(n, f"unknown format: {FORMAT_HELP}; got keys {keys}")
            return
        if self.format is None:
            self.format, self.format_line = fmt, n
        elif fmt != self.format:
            self.add(
                n, f"this line is {fmt} data but line {self.format_line} is {self.format}; use one format"
            )
            return
        messages = CHECKS[fmt](record)
        for message in messages:
            self.add(n, message)
        if messages:
            return
        if fmt == "classification":
            pair = "text_pair" in record
            if self.pair is None:
                self.pair, self.pair_line = pair, n
            elif pair != self.pair:
                has = "has" if self.pair else "has no"
                self.add(
                    n, f"'text_pair' present on some lines only (line {self.pair_line} {has} 'text_pair')"
                )
                return
            if not self.label(n, record["label"]):
                return
        self.examples += 1


def _decode(raw: bytes, n: int) -> tuple[str | None, str | None]:
    """(text, None) or (None, problem message) for one raw line."""
    if n == 1:
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            return None, "the file is UTF-16; save it as UTF-8"
        raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark is harmless
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return (
            None,
            f"not valid UTF-8 (byte {exc.start + 1} is 0x{raw[exc.start]:02x}); save the file as UTF-8",
        )


# Files that are plainly not JSONL, told apart by their first bytes.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"PAR1", "a Parquet file"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an Excel 97-2003 workbook (XLS)"),
    (b"BZh", "a bzip2-compressed file"),
    (b"\xfd7zXZ\x00", "an xz-compressed file"),
    (b"\x28\xb5\x2f\xfd", "a zstd-compressed file"),
)
_EXAMPLES = {
    "classification": '{"text": "a great movie", "label": 1}',
    "chat": '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}',
    "prompt_completion": '{"prompt": "2 + 2 =", "completion": " 4"}',
}
_PANDAS = 'pandas: df.to_json("train.jsonl", orient="records", lines=True)'


def not_jsonl(first: bytes, filename: str = "") -> str | None:
    """One sentence for a file that is plainly not JSONL (CSV, TSV, a JSON array, pretty-printed JSON,
    Parquet, XLSX, a compressed file...), judged from its first non-blank line (raw bytes): what it looks like
    and one line of the expected format. None when the line may be JSONL (line-by-line checks then apply).
    `filename` only tells an Excel workbook from other zip archives (a zip header may hold a newline byte)."""

    def told(
        what: str, fix: str = "upload JSONL", example: str = "classification", hint: str = _PANDAS
    ) -> str:
        line = (
            f"this looks like {what}, not JSONL; {fix}: one JSON object per line, e.g. {_EXAMPLES[example]}"
        )
        return f"{line} ({hint})" if hint else line

    for magic, what in _MAGIC:
        if first.startswith(magic):
            if magic == b"\x1f\x8b":
                return told(what, "decompress it and upload the JSONL inside", hint="")
            excel = filename.lower().endswith((".xlsx", ".xlsm")) or b"[Content_Types].xml" in first
            if magic == b"PK\x03\x04" and (excel or b"xl/" in first):
                what = "an Excel workbook (XLSX)"
            return told(what)
    try:
        text = first.removeprefix(b"\xef\xbb\xbf").decode("utf-8").strip()
    except UnicodeDecodeError:
        return None  # the line-by-line check names the byte
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # invalid JSON, or a number past int()'s digit limit
        value = None
    else:
        if not isinstance(value, list) or not any(isinstance(v, dict) for v in value):
            return None  # an object (JSONL), or a value the line-by-line check names
    if text.startswith("["):
        return told("a JSON array (one document holding every example)")
    if text == "{":
        return told("pretty-printed JSON (one object spread over many lines)", hint="")
    if "{" not in text and ("\t" in text or "," in text):
        what = "TSV" if "\t" in text else "CSV"
        header = text if len(text) <= 60 else text[:57] + "..."
        words = set(re.split(r"[\s,\"';]+", text.lower()))
        example = (
            "chat"
            if {"messages", "role", "content"} & words
            else "prompt_completion"
            if {"prompt", "completion"} <= words
            else "classification"
        )
        return told(f"{what} (first line {header!r})", example=example)
    return None


def _fits_float(value: int) -> bool:
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _sorted_labels(labels: set[Any], kind: LabelKind | None) -> list[str]:
    if kind == "int":
        return [str(x) for x in sorted(labels)]
    if kind == "str":
        return sorted(labels)
    return []


def validate_lines(
    lines: Iterable[bytes], filename: str, max_problems: int = 20, min_examples: int = 1
) -> DatasetReport:
    """Check JSONL lines (raw bytes, e.g. an open binary file); list at most `max_problems` problems."""
    scan = _Scan(filename, max_problems)
    seen_line = False
    for n, raw in enumerate(lines, start=1):
        if not seen_line and raw.strip() and (verdict := not_jsonl(raw, filename)) is not None:
            scan.add(0, verdict)  # one message for the file, not one per line
            seen_line = True
            break
        text, problem = _decode(raw, n)
        if problem is not None:
            seen_line = True
            scan.add(n, problem)
            if n == 1 and "UTF-16" in problem:
                break
            continue
        assert text is not None
        if not text.strip():
            continue
        seen_line = True
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            scan.add(n, f"invalid JSON ({exc.msg} at column {exc.colno}); write one JSON object per line")
            continue
        except ValueError:  # an integer of more than sys.get_int_max_str_digits() digits (4300)
            limit = sys.get_int_max_str_digits()
            scan.add(n, f"a number with more than {limit} digits; write numbers with fewer digits")
            continue
        except RecursionError:  # e.g. "[[[[..." 100,000 deep: the parser's stack, not a JSON error
            scan.add(n, "invalid JSON (nested too deeply); write one flat JSON object per line")
            continue
        if not isinstance(record, dict):
            scan.add(n, f"expected a JSON object, got {_type_name(record)}")
            continue
        scan.record(n, record)
    scan.finish()
    if not seen_line:
        scan.add(0, "the file is empty")
    elif scan.examples < min_examples and not scan.problems:
        scan.add(0, f"only {scan.examples} example(s); at least {min_examples} needed")
    return DatasetReport(
        filename=filename,
        format=scan.format,
        examples=scan.examples,
        label_kind=scan.kind if scan.format == "classification" else None,
        labels=_sorted_labels(scan.labels, scan.kind),
        problems=scan.problems,
        more_problems=scan.more,
    )


def validate_file(path: Path, filename: str | None = None, max_problems: int = 20) -> DatasetReport:
    """`validate_lines` on a file on disk; `filename` (default: the file's name) is what messages show."""
    with Path(path).open("rb") as fh:
        return validate_lines(fh, filename or Path(path).name, max_problems=max_problems)


def check_training(train: DatasetReport) -> list[Problem]:
    """Problems of a file used as training data (a validation file may be narrower): one label only."""
    if train.format == "classification" and train.label_kind in ("int", "str") and len(train.labels) == 1:
        text = f"{train.filename}: every example has the label {train.labels[0]!r}; "
        return [Problem(0, text + "a classifier needs two labels or more")]
    return []


def check_pair(train: DatasetReport, valid: DatasetReport) -> list[Problem]:
    """Problems between a training file and its validation file (both already valid on their own)."""
    out: list[Problem] = []
    if train.format and valid.format and TASK_OF_FORMAT[train.format] != TASK_OF_FORMAT[valid.format]:
        out.append(
            Problem(0, f"{valid.filename} is {valid.format} data but {train.filename} is {train.format} data")
        )
        return out
    tk, vk = train.label_kind, valid.label_kind
    if tk and vk and tk != vk and not (tk == "float" and vk == "int"):
        out.append(
            Problem(
                0,
                f"{valid.filename} has {KIND_WORDS[vk]} labels but {train.filename} has "
                f"{KIND_WORDS[tk]} labels",
            )
        )
    elif tk in ("int", "str") and vk == tk:
        known = set(train.labels)  # once: a lookup per validation label, not a rebuild
        unseen = [label for label in valid.labels if label not in known]
        if unseen:
            shown = ", ".join(repr(x) for x in unseen[:10])
            out.append(Problem(0, f"{valid.filename} has label(s) {shown} that {train.filename} never has"))
    return out
