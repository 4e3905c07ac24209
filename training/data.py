"""Data: validated JSONL -> token ids -> dynamically padded batches in a seeded order.

Examples are tokenised once up front (data sets here are small: thousands of lines). A batch is padded to
its own longest example (dynamic padding). The order of an epoch is a permutation drawn from a generator
seeded with (seed, epoch) alone, so a resumed run finds the same batches from (epoch, index).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from rules.datasets import DatasetReport, check_pair, check_training, validate_file
from training.chat import IGNORE, encode_causal
from training.spec import DataError


@dataclass
class LabelMap:
    """Classification labels: `names` in class-id order (int/str labels); regression: kind "float"."""

    kind: str  # "int" | "str" | "float"
    names: list[str] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return 1 if self.kind == "float" else len(self.names)

    def encode(self, label: Any, where: str) -> float | int:
        if self.kind == "float":
            return float(label)
        try:
            return self.names.index(str(label))
        except ValueError:
            raise DataError(
                f"{where}: label {label!r} never appears in the training file (labels: {self.names})"
            ) from None


@dataclass
class Encoded:
    """One tokenised example; `label` is a class id / float (classification) or per-token ids (causal_lm)."""

    line: int
    input_ids: list[int]
    token_type_ids: list[int] | None
    label: Any
    truncated: bool


def check_files(train: Path, valid: Path | None) -> tuple[DatasetReport, DatasetReport | None]:
    """Validate both files (rules.datasets); DataError listing the problems (file, line, what) otherwise."""
    train_report = validate_file(train, "training file")
    if not train_report.ok:
        raise DataError(train_report.describe(), param="training_file")
    if problems := check_training(train_report):
        raise DataError(problems[0].message, param="training_file")
    valid_report = None
    if valid is not None:
        valid_report = validate_file(valid, "validation file")
        if not valid_report.ok:
            raise DataError(valid_report.describe(), param="validation_file")
        problems = check_pair(train_report, valid_report)
        if problems:
            raise DataError("; ".join(p.message for p in problems), param="validation_file")
    return train_report, valid_report


def read_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(1-based line number, record) for every non-blank line of an already validated JSONL file."""
    out: list[tuple[int, dict[str, Any]]] = []
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, start=1):
            text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            if text.strip():
                out.append((n, json.loads(text)))
    return out


def encode_records(
    records: list[tuple[int, dict[str, Any]]],
    task: str,
    tokenizer: PreTrainedTokenizerBase,
    max_len: int,
    labels: LabelMap | None,
    filename: str,
) -> list[Encoded]:
    """Tokenise every record; classification pairs are truncated longest-first, causal LM from the right."""
    out: list[Encoded] = []
    for line, record in records:
        where = f"{filename} line {line}"
        if task == "classification":
            assert labels is not None
            enc = tokenizer(record["text"], record.get("text_pair"), truncation=True, max_length=max_len)
            full = tokenizer(record["text"], record.get("text_pair"), truncation=False)
            out.append(
                Encoded(
                    line,
                    list(enc["input_ids"]),
                    list(enc["token_type_ids"]) if "token_type_ids" in enc else None,
                    labels.encode(record["label"], where),
                    len(full["input_ids"]) > max_len,
                )
            )
        else:
            ids, token_labels, truncated = encode_causal(tokenizer, record, max_len, where)
            out.append(Encoded(line, ids, None, token_labels, truncated))
    return out


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The example order of `epoch`: a permutation that depends on (seed, epoch) only."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen).tolist()


def collate(examples: list[Encoded], pad_id: int, task: str) -> dict[str, torch.Tensor]:
    """Pad to the longest example of the batch: input_ids / attention_mask (B, T), labels (B,) or (B, T)."""
    longest = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(examples), longest), dtype=torch.long)  # (B, T)
    for i, e in enumerate(examples):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[i, : len(e.input_ids)] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if examples[0].token_type_ids is not None:
        types = torch.zeros((len(examples), longest), dtype=torch.long)
        for i, e in enumerate(examples):
            types[i, : len(e.input_ids)] = torch.tensor(e.token_type_ids or [])
        batch["token_type_ids"] = types
    if task == "classification":
        dtype = torch.float if isinstance(examples[0].label, float) else torch.long
        batch["labels"] = torch.tensor([e.label for e in examples], dtype=dtype)  # (B,)
    else:
        labels = torch.full((len(examples), longest), IGNORE, dtype=torch.long)  # (B, T)
        for i, e in enumerate(examples):
            labels[i, : len(e.label)] = torch.tensor(e.label)
        batch["labels"] = labels
    return batch


def loss_units(batch: dict[str, torch.Tensor], task: str) -> int:
    """What a batch's mean loss averages over: examples (classification) or learnt tokens after the shift."""
    if task == "classification":
        return int(batch["labels"].shape[0])
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def micro_batches(
    encoded: list[Encoded], order: list[int], start: int, batch_size: int, accum: int
) -> list[list[Encoded]]:
    """The examples of one optimizer step (order[start:start+batch_size]) split into `accum` micro-batches."""
    chosen = [encoded[i] for i in order[start : start + batch_size]]
    size = -(-len(chosen) // accum)
    return [chosen[i : i + size] for i in range(0, len(chosen), size)]


def first_micro_batches(encoded: list[Encoded], seed: int, count: int, size: int) -> list[list[Encoded]]:
    """The first `count` micro-batches of `size` examples in training order (for SparseGrad's basis phase)."""
    out: list[list[Encoded]] = []
    epoch, start, order = 0, 0, epoch_order(len(encoded), seed, 0)
    while len(out) < count:
        if start >= len(encoded):
            epoch, start = epoch + 1, 0
            order = epoch_order(len(encoded), seed, epoch)
        out.append([encoded[i] for i in order[start : start + size]])
        start += size
    return out
