"""The engine's own view of a classification fine-tune: its evaluation path, run in the test process."""

from __future__ import annotations

import io
import json
import tarfile
from contextlib import nullcontext
from pathlib import Path

import torch

import sparsegrad as sg
from training.data import LabelMap, collate, encode_records, read_records
from training.metrics import evaluate
from training.models import load_model, load_tokenizer, registry_entry


def extract(archive: bytes, out: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(out, filter="data")
    return out


def engine_view(models_dir: Path, base: str, delta: Path, valid: Path) -> tuple[torch.Tensor, float]:
    """(probabilities per example (N, L), accuracy) of base + delta on `valid`, encoded, batched and
    evaluated by the engine's own functions (training.data, training.metrics)."""
    meta = json.loads((delta / "sgft_delta.json").read_text())
    labels = meta["labels"]
    entry = registry_entry(base, models_dir)
    tokenizer = load_tokenizer(entry)
    model = load_model(entry, "classification", labels, False).eval()
    model.config.pad_token_id = tokenizer.pad_token_id
    sg.load_delta(model, delta)
    label_map = LabelMap("int", list(labels))
    encoded = encode_records(
        read_records(valid), "classification", tokenizer, int(meta["max_seq_length"]), label_map, "valid"
    )
    batches = [
        collate(encoded[i : i + 16], tokenizer.pad_token_id, "classification")
        for i in range(0, len(encoded), 16)
    ]
    metrics = evaluate(model, batches, "classification", len(labels), torch.device("cpu"), nullcontext)
    with torch.no_grad():
        logits = torch.cat([model(**{k: v for k, v in b.items() if k != "labels"}).logits for b in batches])
    return torch.softmax(logits.float(), -1), float(metrics["valid_accuracy"])
