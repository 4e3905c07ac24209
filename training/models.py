"""Load a registry model and its tokenizer for a task (never with remote code); ModelLoadError otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from rules.registry import ModelEntry, UnknownModel, get_model
from training.spec import ModelLoadError


def registry_entry(name: str, models_dir: Path | None) -> ModelEntry:
    """The registry entry; ModelLoadError listing the available names when unknown."""
    try:
        return get_model(name, models_dir)
    except UnknownModel as exc:
        raise ModelLoadError(str(exc), param="model") from None


def _source(entry: ModelEntry) -> str:
    src = str(entry.path) if entry.path is not None else entry.hub_id
    if src is None:
        raise ModelLoadError(f"model {entry.name!r} has neither a local folder nor a hub id", param="model")
    return src


def load_tokenizer(entry: ModelEntry) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a pad token (the EOS token where the model has none)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(_source(entry), trust_remote_code=False)
    except Exception as exc:
        raise ModelLoadError(
            f"could not load the tokenizer of {entry.name!r} from {entry.path}: {type(exc).__name__}: {exc}; "
            "the model folder needs tokenizer files (tokenizer.json or vocab files)",
            param="model",
        ) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def max_positions(entry: ModelEntry) -> int:
    """The model's position limit (max_position_embeddings / n_positions; 8192 when it states none)."""
    try:
        config = AutoConfig.from_pretrained(_source(entry), trust_remote_code=False)
    except Exception as exc:
        raise ModelLoadError(f"could not read config.json of {entry.name!r}: {exc}", param="model") from exc
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return min(value, 8192)
    return 8192


def load_model(
    entry: ModelEntry,
    task: str,
    labels: list[str] | None,
    regression: bool,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """The model with the task's head (sequence classification with a fresh head, or causal LM), its weights
    loaded straight into `dtype` (float32, or bf16 for a job whose frozen weights are stored in bf16)."""
    kwargs: dict[str, Any] = {"trust_remote_code": False, "dtype": dtype}
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the "newly initialised classifier" report is expected here
    hf_logging.disable_progress_bar()
    try:
        if task == "classification":
            if regression:
                kwargs |= {"num_labels": 1, "problem_type": "regression"}
            else:
                assert labels is not None
                kwargs |= {
                    "num_labels": len(labels),
                    "problem_type": "single_label_classification",
                    "id2label": dict(enumerate(labels)),
                    "label2id": {name: i for i, name in enumerate(labels)},
                }
            model = AutoModelForSequenceClassification.from_pretrained(
                _source(entry), ignore_mismatched_sizes=True, **kwargs
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(_source(entry), **kwargs)
    except Exception as exc:
        raise ModelLoadError(
            f"could not load {entry.name!r} ({entry.architecture}) for {task}: {type(exc).__name__}: {exc}",
            param="model",
        ) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    if model.config.pad_token_id is None and getattr(model.config, "eos_token_id", None) is not None:
        eos = model.config.eos_token_id
        model.config.pad_token_id = eos[0] if isinstance(eos, list) else eos
    return model.to(dtype)
