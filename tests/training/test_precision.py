"""The engine's precision setting: the same job in fp32, under bf16 autocast and with bf16 frozen weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from training import Hooks, HyperparameterError, JobSpec, TrainingError, merge_delta, run_training
from training.precision import resolve_precision
from training.testing import chat_records, write_jsonl

FAST = {"n_epochs": 2, "batch_size": 4, "max_seq_length": 64, "basis_steps": 2, "learning_rate": 1e-3}


def _chat(tmp: Path) -> tuple[Path, Path]:
    train = write_jsonl(tmp / "train.jsonl", chat_records(24))
    return train, write_jsonl(tmp / "valid.jsonl", chat_records(8))


def _run(tmp: Path, models_dir: Path, precision: str, method: str = "sparsegrad", **kw: Any) -> Any:
    train, valid = _chat(tmp)
    messages: list[str] = []

    spec = JobSpec(model="tiny-llama", method=method, hyperparameters={**FAST, **kw})  # type: ignore[arg-type]
    result = run_training(
        spec,
        train,
        valid,
        tmp / "run",
        hooks=Hooks(on_message=messages.append),
        models_dir=models_dir,
        precision=precision,
    )
    return result, messages


def test_auto_is_bf16_on_cuda_and_fp32_on_cpu() -> None:
    assert resolve_precision("auto", torch.device("cpu")).name == "fp32"
    cuda = resolve_precision("auto", torch.device("cuda"))
    assert cuda.name == "bf16" and cuda.autocast_dtype == torch.bfloat16
    assert cuda.frozen_dtype == torch.float32
    assert resolve_precision("bf16-weights", torch.device("cpu")).frozen_dtype == torch.bfloat16


@pytest.mark.parametrize("method", ["sparsegrad", "meprop", "lora", "full"])
@pytest.mark.parametrize("precision", ["bf16", "bf16-weights"])
def test_job_trains_in_reduced_precision(
    precision: str, method: str, tmp_path: Path, models_dir: Path
) -> None:
    result, messages = _run(tmp_path, models_dir, precision, method)
    assert result.status == "completed"
    losses = [h["valid_loss"] for h in result.history if "valid_loss" in h]
    assert losses[-1] < losses[0]
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the engine trains on CUDA where there is one
    assert any(m.startswith(f"Precision {precision} on {device}: bf16 autocast") for m in messages), messages
    if precision == "bf16-weights" and method != "full":
        assert any("frozen weights stored in bfloat16" in m for m in messages)
    merged = merge_delta("tiny-llama", result.delta_dir, tmp_path / "merged", models_dir=models_dir)
    model = AutoModelForCausalLM.from_pretrained(merged)
    base = load_file(str(models_dir / "tiny-llama" / "model.safetensors"))
    up = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(model.state_dict()[up], base[up])  # the MLP moved


def test_resume_refuses_a_checkpoint_of_other_weight_storage(tmp_path: Path, models_dir: Path) -> None:
    result, _ = _run(tmp_path / "a", models_dir, "bf16-weights", checkpoint_every=2, max_steps=4)
    checkpoints = sorted((tmp_path / "a" / "run").glob("checkpoints/step-*"))
    assert result.status == "completed" and checkpoints
    train, valid = _chat(tmp_path / "b")
    spec = JobSpec(model="tiny-llama", hyperparameters={**FAST, "checkpoint_every": 2, "max_steps": 4})
    with pytest.raises(TrainingError, match="storage of frozen weights"):
        run_training(spec, train, valid, tmp_path / "b", resume_from=checkpoints[0], models_dir=models_dir)


def test_unknown_precision_is_named(tmp_path: Path, models_dir: Path) -> None:
    with pytest.raises(HyperparameterError, match="precision must be one of"):
        _run(tmp_path, models_dir, "fp8")


@pytest.mark.parametrize("support", ["dynamic", "fixed"])
def test_bf16_weights_paused_then_resumed_equals_uninterrupted(
    support: str, tmp_path: Path, models_dir: Path
) -> None:
    """The side path is rebuilt from the checkpoint's ΔC: the resumed job ends with the same delta."""
    from tests.training.test_loop import StopAfter, delta_tensors, same_tensors

    train, valid = _chat(tmp_path)
    hyper = {**FAST, "checkpoint_every": 3, "support": support}
    spec = JobSpec(model="tiny-llama", hyperparameters=hyper)

    def go(work: str, hooks: Hooks | None = None, resume: Path | None = None) -> Any:
        return run_training(
            spec, train, valid, tmp_path / work, hooks, resume, models_dir, precision="bf16-weights"
        )

    straight = go("straight")
    stopper = StopAfter(5, "pause")
    paused = go("first", Hooks(on_step=stopper.on_step, should_stop=stopper))
    assert paused.status == "paused" and paused.checkpoint_dir is not None
    resumed = go("second", resume=paused.checkpoint_dir)
    assert resumed.status == "completed" and resumed.history == straight.history
    same_tensors(delta_tensors(resumed), delta_tensors(straight))
