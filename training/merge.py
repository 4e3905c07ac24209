"""`merge_delta`: a delta (any method) + its base model -> a plain Hugging Face model folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsegrad.delta import CONFIG_NAME as SG_CONFIG
from training.methods import DELTA_META, FULL_CONFIG, REGISTRY
from training.methods.lora import Lora
from training.models import load_model, load_tokenizer, registry_entry
from training.spec import ModelLoadError, TrainingError


def delta_config_path(delta_dir: Path) -> Path | None:
    """The config file of a delta folder, or None when it is not one: a SparseGrad / MeProp delta
    (sparsegrad_delta.json), a full one (full_delta.json), a LoRA (peft's adapter_config.json), or one of the
    first two written before 2026-12-06 (adapter_config.json)."""
    configs = [delta_dir / SG_CONFIG, delta_dir / FULL_CONFIG, delta_dir / "adapter_config.json"]
    return next((p for p in configs if p.is_file()), None)


def delta_config(delta_dir: Path) -> dict[str, Any]:
    """The parsed config of a delta folder (TrainingError when it is not one)."""
    config_path = delta_config_path(delta_dir)
    if config_path is None:
        raise TrainingError(
            f"{delta_dir} is not a delta folder (no {SG_CONFIG}, {FULL_CONFIG} nor adapter_config.json)",
            param="delta",
        )
    config: dict[str, Any] = json.loads(config_path.read_text())
    return config


def _read_meta(delta_dir: Path) -> dict[str, Any]:
    meta_path = delta_dir / DELTA_META
    config = delta_config(delta_dir)
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if "method" not in meta:  # a delta written elsewhere: infer from its config
        fmt = config.get("format")
        meta["method"] = Lora.name if config.get("peft_type") == "LORA" else config.get("method", fmt)
        meta.setdefault("task", config.get("task"))
        meta.setdefault("labels", config.get("labels"))
    return meta


def merge_delta(model_name: str, delta_dir: Path, out_dir: Path, models_dir: Path | None = None) -> Path:
    """Write base model `model_name` with the delta in `delta_dir` merged in to `out_dir` (config, weights,
    tokenizer): a folder `from_pretrained` loads without sparsegrad or peft. Returns `out_dir`."""
    delta_dir, out_dir = Path(delta_dir), Path(out_dir)
    meta = _read_meta(delta_dir)
    entry = registry_entry(model_name, models_dir)
    task = str(meta.get("task") or entry.task)
    labels = meta.get("labels")
    regression = task == "classification" and not labels
    base = load_model(entry, task, labels, regression)
    method = meta["method"]
    try:
        merged = _merge(base, method, delta_dir)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(
            f"the delta does not fit base model {model_name!r}: {exc}", param="model"
        ) from exc
    tokenizer = load_tokenizer(entry)
    merged.config.pad_token_id = tokenizer.pad_token_id  # type: ignore[union-attr]
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)  # type: ignore[operator]
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


@torch.no_grad()
def _merge(base: nn.Module, method: str, delta_dir: Path) -> nn.Module:
    """`base` with the delta merged in by the registered method that wrote it (a full delta's config names
    its format, "full", which is that method's name)."""
    if method not in REGISTRY:
        raise ValueError(f"unknown delta method {method!r}")
    return REGISTRY[method].merge(base, delta_dir)
