"""Tiny random BERT / LLaMA / GPT-2 models and batches, built in code (no downloads)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

VOCAB = 97


def tiny_model(kind: str, seed: int = 0) -> nn.Module:
    """A fresh tiny model of `kind` ("bert", "llama", "gpt2") with dropout off, same weights for a seed."""
    torch.manual_seed(seed)
    model: nn.Module
    if kind == "bert":
        cfg = BertConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            num_labels=3,
        )
        model = BertForSequenceClassification(cfg)
    elif kind == "llama":
        cfg = LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(cfg)
    elif kind == "gpt2":
        cfg = GPT2Config(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=64,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        model = GPT2LMHeadModel(cfg)
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
