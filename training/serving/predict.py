"""Predictions of a classification or regression model, tokenised and padded as the engine evaluates."""

from __future__ import annotations

from typing import Any

import torch

from training.data import Encoded, collate
from training.serving.models import Served

BATCH = 16


def _encode(served: Served, inputs: list[tuple[str, str | None]]) -> list[Encoded]:
    """As training.data.encode_records does for classification (pairs truncated longest-first)."""
    tok = served.tokenizer
    out = []
    for i, (text, pair) in enumerate(inputs):
        enc = tok(text, pair, truncation=True, max_length=served.max_seq_length)
        types = list(enc["token_type_ids"]) if "token_type_ids" in enc else None
        out.append(Encoded(i, list(enc["input_ids"]), types, 0, False))
    return out


@torch.no_grad()
def predict(served: Served, inputs: list[tuple[str, str | None]]) -> tuple[list[dict[str, Any]], int]:
    """Per input: `label` and `score` (its probability; for regression the predicted value, label None)
    and `scores` (a probability per label); plus the number of tokens read."""
    encoded = _encode(served, inputs)
    pad = served.tokenizer.pad_token_id or 0
    results: list[dict[str, Any]] = []
    device = next(served.model.parameters()).device
    with served.use():
        for start in range(0, len(encoded), BATCH):
            batch = collate(encoded[start : start + BATCH], pad, "classification")
            batch.pop("labels")
            logits = served.model(**{k: v.to(device) for k, v in batch.items()}).logits.float()  # (B, L)
            for row in logits.cpu():
                if row.numel() == 1 or not served.labels:
                    results.append({"label": None, "score": float(row[0]), "scores": None})
                    continue
                probs = torch.softmax(row, dim=-1)  # (L,)
                best = int(probs.argmax())
                results.append(
                    {
                        "label": served.labels[best],
                        "score": float(probs[best]),
                        "scores": {name: float(p) for name, p in zip(served.labels, probs, strict=True)},
                    }
                )
    return results, sum(len(e.input_ids) for e in encoded)
