"""Outcomes that tell the truth, through the real loop on a tiny BERT: divergence fails the run, a collapse
to the majority label warns, and with a validation file the result is the best evaluated step."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tests.training.conftest import relabel
from tests.training.test_loop import StopAfter, delta_tensors, same_tensors
from training import Diverged, Hooks, HyperparameterError, JobSpec, TrainResult, merge_delta, run_training

BASE = {"batch_size": 8, "max_seq_length": 32, "basis_steps": 2}


def train(
    tmp: Path,
    data: tuple[Path, Path],
    models_dir: Path,
    method: str = "full",
    hooks: Hooks | None = None,
    resume: Path | None = None,
    **hyper: Any,
) -> TrainResult:
    spec = JobSpec(model="tiny-bert", method=method, hyperparameters={**BASE, **hyper}, seed=0)  # type: ignore[arg-type]
    return run_training(spec, data[0], data[1], tmp, hooks=hooks, resume_from=resume, models_dir=models_dir)


def scores(tmp: Path, sst2: tuple[Path, Path], low: float, high: float) -> tuple[Path, Path]:
    """The SST-2 slices as a regression task: label 0 -> low, 1 -> high."""
    names = {0: low, 1: high}
    return relabel(sst2[0], tmp / "t.jsonl", names), relabel(sst2[1], tmp / "v.jsonl", names)


def test_learning_rate_0_1_diverges_and_the_suggested_tenth_trains(
    tmp_path: Path, sst2: tuple[Path, Path], models_dir: Path
) -> None:
    # Targets 0 and 0.1: the first step's squared error is small, lr 0.1 throws the predictions far off.
    data = scores(tmp_path, sst2, 0.0, 0.1)
    with pytest.raises(Diverged) as caught:
        train(tmp_path / "high", data, models_dir, n_epochs=3, learning_rate=0.1)
    error = caught.value
    assert error.code == "diverged" and error.param == "learning_rate"
    assert error.message.startswith("Training diverged at step 11: the training loss stayed above 3x")
    assert "it was 0.1; try 0.01" in error.message
    result = train(tmp_path / "tenth", data, models_dir, n_epochs=3, learning_rate=0.01)
    assert result.status == "completed" and result.step == 24


def test_a_loss_that_overflows_fails_as_diverged_at_its_step(
    tmp_path: Path, sst2: tuple[Path, Path], models_dir: Path
) -> None:
    data = scores(tmp_path, sst2, 0.0, 1e30)  # the squared error of 1e30 is inf in float32
    with pytest.raises(Diverged) as caught:
        train(tmp_path / "run", data, models_dir, n_epochs=1, learning_rate=1e-3)
    assert caught.value.message.startswith("Training diverged at step 1: the training loss became inf")


def test_a_collapse_to_the_majority_label_warns_and_a_learnt_run_does_not(
    tmp_path: Path, sst2: tuple[Path, Path], models_dir: Path
) -> None:
    data = (sst2[0], sst2[0])  # validate on the training lines: the tiny model can learn (memorise) them
    warnings: list[str] = []
    messages: list[str] = []
    hooks = Hooks(on_warning=warnings.append, on_message=messages.append)
    bad = train(tmp_path / "bad", data, models_dir, hooks=hooks, n_epochs=4, learning_rate=0.1, eval_every=8)
    share = 36 / 64  # label 0 is 36 of the 64 lines
    assert bad.metrics["valid_accuracy"] == share and bad.warnings == warnings and len(warnings) == 1
    assert warnings[0].startswith(
        "Validation accuracy 0.5625 is at most the majority label's share of the validation set (0.5625, "
        "label '0') plus one point"
    )
    assert not any("majority" in m for m in messages)  # warning level only
    good = train(tmp_path / "good", data, models_dir, n_epochs=10, learning_rate=3e-3, eval_every=8)
    assert good.metrics["valid_accuracy"] > share + 0.3 and good.warnings == []


def _merged_valid_loss(result: TrainResult, valid: Path, tmp: Path, models_dir: Path) -> float:
    """The validation loss of the published delta merged into the base model (plain transformers)."""
    assert result.delta_dir is not None
    merged = merge_delta("tiny-bert", result.delta_dir, tmp, models_dir=models_dir)
    model = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged)
    losses = []
    with torch.no_grad():
        for row in map(json.loads, valid.read_text().splitlines()):
            enc = tokenizer(row["text"], truncation=True, max_length=32, return_tensors="pt")
            losses.append(float(model(**enc, labels=torch.tensor([row["label"]])).loss))
    return sum(losses) / len(losses)


def test_the_result_is_the_best_evaluated_step_and_last_keeps_the_last(
    tmp_path: Path, sst2: tuple[Path, Path], models_dir: Path
) -> None:
    hyper = {"n_epochs": 3, "learning_rate": 0.1, "eval_every": 1}  # a bouncing validation loss
    messages: list[str] = []
    resolved: list[dict[str, Any]] = []
    hooks = Hooks(on_message=messages.append, on_resolved=resolved.append)
    best = train(tmp_path / "best", sst2, models_dir, "sparsegrad", hooks=hooks, **hyper)
    evals = {int(r["step"]): r for r in best.history if "valid_loss" in r and r["step"] > 0}
    kept = min(evals, key=lambda s: evals[s]["valid_loss"])
    assert resolved[0]["result_checkpoint"] == "best" and 1 <= kept < best.step == 24
    assert best.result_step == kept and best.metrics["result_step"] == kept
    assert best.metrics["valid_loss"] == evals[kept]["valid_loss"] < evals[24]["valid_loss"]
    kept_loss, last_loss = evals[kept]["valid_loss"], evals[24]["valid_loss"]
    assert f"Kept step {kept} as the result: lowest valid_loss {kept_loss:.4g}; the last step (24) had " in (
        "\n".join(messages)
    )
    published = _merged_valid_loss(best, sst2[1], tmp_path / "m-best", models_dir)
    assert published == pytest.approx(kept_loss, abs=1e-4)
    assert not (tmp_path / "best" / "best-delta").exists()  # moved into place as the delta

    last = train(tmp_path / "last", sst2, models_dir, "sparsegrad", result_checkpoint="last", **hyper)
    assert last.history == best.history and last.result_step == 24
    assert last.metrics["valid_loss"] == last_loss
    published_last = _merged_valid_loss(last, sst2[1], tmp_path / "m-last", models_dir)
    assert published_last == pytest.approx(last_loss, abs=1e-4)


def test_a_resumed_run_keeps_the_best_step_from_before_its_pause(
    tmp_path: Path, sst2: tuple[Path, Path], models_dir: Path
) -> None:
    hyper = {"n_epochs": 3, "learning_rate": 0.1, "eval_every": 1, "checkpoint_every": 5}
    straight = train(tmp_path / "straight", sst2, models_dir, "sparsegrad", **hyper)
    assert straight.result_step is not None and straight.result_step < straight.step - 1
    stopper = StopAfter(straight.result_step + 1, "pause")  # the best step is chosen before the pause
    hooks = Hooks(on_step=stopper.on_step, should_stop=stopper)
    paused = train(tmp_path / "first", sst2, models_dir, "sparsegrad", hooks=hooks, **hyper)
    assert paused.checkpoint_dir is not None and (paused.checkpoint_dir / "best-delta").is_dir()
    carried = tmp_path / "carried"  # a new worker: only the checkpoint folder comes along
    shutil.copytree(paused.checkpoint_dir, carried)
    resumed = train(tmp_path / "second", sst2, models_dir, "sparsegrad", resume=carried, **hyper)
    assert resumed.result_step == straight.result_step and resumed.metrics == straight.metrics
    same_tensors(delta_tensors(resumed), delta_tensors(straight))


def test_best_needs_a_validation_file(tmp_path: Path, sst2: tuple[Path, Path], models_dir: Path) -> None:
    spec = JobSpec(model="tiny-bert", method="full", hyperparameters={**BASE, "result_checkpoint": "best"})
    with pytest.raises(HyperparameterError, match="needs a validation_file"):
        run_training(spec, sst2[0], None, tmp_path, models_dir=models_dir)
    plain = JobSpec(model="tiny-bert", method="full", hyperparameters={**BASE, "max_steps": 2})
    assert run_training(plain, sst2[0], None, tmp_path / "plain", models_dir=models_dir).result_step == 2
