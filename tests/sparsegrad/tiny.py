"""Tiny random BERT / LLaMA / GPT-2 models (training.testing.random_model) and batches, built in code."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from training.testing import random_model

VOCAB = 97


def tiny_model(kind: str, seed: int = 0) -> nn.Module:
    """A fresh tiny model of `kind` ("bert", "llama", "gpt2") with dropout off, same weights for a seed:
    training.testing.random_model's, at 64 positions; a 3-block LLaMA, a 3-class BERT classifier."""
    if kind == "bert":
        model = random_model("bert", VOCAB, seed, positions=64, head="classifier", num_labels=3)
    elif kind == "llama":
        model = random_model("llama", VOCAB, seed, layers=3, positions=64)
    elif kind == "gpt2":
        model = random_model("gpt2", VOCAB, seed, positions=64)
    else:
        raise ValueError(kind)
    return model.float()


def tiny_batches(kind: str, n: int, batch: int = 4, seq: int = 12, seed: int = 1) -> list[dict[str, Any]]:
    """`n` random batches with labels; BERT batches carry right padding (attention_mask zeros)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, VOCAB, (batch, seq), generator=g)
        mask = torch.ones(batch, seq, dtype=torch.long)
        if kind == "bert":
            lengths = torch.randint(3, seq + 1, (batch,), generator=g)
            for i, length in enumerate(lengths.tolist()):
                mask[i, length:] = 0
                ids[i, length:] = 0
            labels = torch.randint(0, 3, (batch,), generator=g)
        else:
            labels = ids.clone()
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out
