"""The memory budget: SparseGrad's auto support and selection change to fit a (simulated) small device."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import sparsegrad as sg
from sparsegrad.memory import Choice, sparse_extra_bytes
from tests.sparsegrad.tiny import tiny_model
from training import Hooks, JobSpec, run_training
from training.budget import fit_to_budget
from training.hparams import TASK_SUPPORT_BLOCK, resolve
from training.testing import chat_records, write_jsonl


def _setup() -> tuple[torch.nn.Module, int, list[tuple[int, int]]]:
    model = tiny_model("llama")
    weights = sum(p.numel() for p in model.parameters()) * 4
    layers = [(t.d_out, t.d_in) for t in sg.find_target_modules(model)]
    return model, weights, layers


def test_choice_follows_the_budget() -> None:
    model, weights, layers = _setup()
    hp = resolve({}, 4000, "classification", "sparsegrad", 64)
    assert hp.selection == "adam" and hp.support == "dynamic"  # the job's own choice: long classification
    roomy, message = fit_to_budget(hp, set(), model, 10 * 2**30, "test")
    block = TASK_SUPPORT_BLOCK  # classification's own block
    assert (roomy.support, roomy.selection, roomy.support_block) == ("dynamic", "adam", block)
    assert "support dynamic in a 20k block, selection adam needs about" in message
    # room for the paper's rule but not for dense moments (over the block)
    rule = sparse_extra_bytes(layers, Choice(hp.density, "dynamic", "gradient", block))
    assert rule < sparse_extra_bytes(layers, Choice(hp.density, "dynamic", "adam", block))
    mid, message = fit_to_budget(hp, set(), model, weights + 2 * rule, "test")
    assert (mid.support, mid.selection, mid.support_block) == ("dynamic", "gradient", block)
    assert "would need about" in message
    assert "so support dynamic in a 20k block, selection gradient" in message
    tight, message = fit_to_budget(hp, set(), model, weights + 1, "test")
    assert (tight.support, tight.support_block) == ("fixed", 2.0)
    assert "even that is over the budget" in message


def test_explicit_settings_are_kept() -> None:
    model, weights, _ = _setup()
    hp = resolve({"support": "dynamic"}, 4000, "causal_lm", "sparsegrad", 64)
    tight, _ = fit_to_budget(hp, {"support"}, model, weights + 1, "test")
    assert tight.support == "dynamic" and tight.support_block == 2.0


def test_job_on_a_small_device_reports_and_uses_the_lean_choice(tmp_path: Path, models_dir: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", chat_records(16))
    hyper = {"n_epochs": 1, "batch_size": 4, "max_seq_length": 64, "basis_steps": 2}
    messages: list[str] = []
    result = run_training(
        JobSpec(model="tiny-llama", hyperparameters=hyper),
        train,
        None,
        tmp_path / "run",
        hooks=Hooks(on_message=messages.append),
        models_dir=models_dir,
        memory_budget=1000,  # a device smaller than the tiny model
    )
    assert result.status == "completed" and result.delta_dir is not None
    budget = [m for m in messages if m.startswith("Memory budget")]
    assert budget and "(SGFT_DEVICE_MEMORY)" in budget[0] and "so support fixed in a 2k block" in budget[0]
    config = json.loads((result.delta_dir / "sparsegrad_delta.json").read_text())
    assert config["support"] == "fixed" and config["config"]["support_block"] == 2.0
