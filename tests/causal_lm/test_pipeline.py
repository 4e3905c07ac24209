"""The whole causal-LM path on a tiny model: GGUF import, registry, chitchat SFT, merge, generate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.causal_lm.tiny_gguf import tiny_llama, write_tiny_gguf
from training import merge_delta, run_training
from training.chitchat import convert
from training.model_setup import generate, import_gguf
from training.spec import JobSpec


@pytest.mark.parametrize("method", ["sparsegrad", "lora"])
def test_gguf_model_trains_on_chitchat_merges_and_generates(tmp_path: Path, method: str) -> None:
    models_dir = tmp_path / "models"
    gguf_path = write_tiny_gguf(tiny_llama(seed=0), tmp_path / "tiny.gguf")
    import_gguf(gguf_path, models_dir / "tiny-chat", "tiny-chat")
    # Byte-level tiny vocabulary: about one token per character, so keep conversations short.
    train, valid = convert(tmp_path / "data", 8, 2, seed=0, max_chars=60)
    spec = JobSpec(
        model="tiny-chat",
        method=method,  # type: ignore[arg-type]
        hyperparameters={"max_steps": 3, "batch_size": 2, "basis_steps": 2, "learning_rate": 1e-2},
        seed=0,
    )
    result = run_training(spec, train, valid, tmp_path / "work", models_dir=models_dir)
    assert result.status == "completed" and result.delta_dir is not None
    merged = merge_delta("tiny-chat", result.delta_dir, tmp_path / "merged", models_dir=models_dir)
    base_w = load_file(str(models_dir / "tiny-chat" / "model.safetensors"))
    merged_w = load_file(str(merged / "model.safetensors"))
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(base_w[name], merged_w[name])  # the MLP was trained
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(base_w[name], merged_w[name])  # attention was not a target
    reply = generate(merged, "hello", max_new_tokens=4)
    assert isinstance(reply, str) and reply == generate(merged, "hello", max_new_tokens=4)
