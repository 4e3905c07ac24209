"""The loop on tiny models: each method, labels of each kind, reproducibility, exact resume, cancellation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rules.hparam_bounds import REMOVED
from tests.training.conftest import relabel
from training import Hooks, JobSpec, StepInfo, TrainResult, merge_delta, run_training
from training.spec import StopReason

FAST = {"n_epochs": 2, "batch_size": 8, "max_seq_length": 32, "basis_steps": 2, "learning_rate": 1e-3}


def train(
    tmp: Path,
    data: tuple[Path, Path],
    models_dir: Path,
    method: str = "full",
    hooks: Hooks | None = None,
    resume: Path | None = None,
    seed: int = 0,
    **hyper: Any,
) -> TrainResult:
    library = {k: hyper.pop(k) for k in list(hyper) if k in REMOVED}  # the library's knobs (JobSpec.library)
    spec = JobSpec(model="tiny-bert", method=method, hyperparameters={**FAST, **hyper}, seed=seed)  # type: ignore[arg-type]
    spec.library = library
    return run_training(spec, data[0], data[1], tmp, hooks=hooks, resume_from=resume, models_dir=models_dir)


def delta_tensors(result: TrainResult) -> dict[str, torch.Tensor]:
    assert result.delta_dir is not None
    for name in ("sparsegrad_delta.safetensors", "full_delta.safetensors", "adapter_model.safetensors"):
        if (result.delta_dir / name).is_file():  # SparseGrad / MeProp, full, LoRA (peft)
            return load_file(str(result.delta_dir / name))
    raise AssertionError(f"no delta weights in {result.delta_dir}")


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("full", {}),
        ("sparsegrad", {}),
        ("lora", {}),
        ("meprop", {}),
        # the paper's GLUE setup: everything but the target layers' base weights also trains densely
        ("sparsegrad", {"train_rest_dense": True}),
        ("lora", {"train_rest_dense": True}),
        ("sparsegrad", {"per_layer_basis": True, "basis_probe_steps": 5}),
        ("sparsegrad", {"selection": "adam"}),
    ],
)
def test_each_method_trains_and_merges_to_a_plain_model(
    method: str, extra: dict[str, Any], tmp_path: Path, sst2: tuple[Path, Path], models_dir: Path
) -> None:
    steps: list[StepInfo] = []
    evals: list[tuple[int, dict[str, float]]] = []
    hooks = Hooks(on_step=steps.append, on_eval=lambda s, m: evals.append((s, m)))
    result = train(tmp_path / "run", sst2, models_dir, method, hooks=hooks, **extra)
    assert result.status == "completed" and result.step == result.total_steps == 16
    assert [s.step for s in steps] == list(range(1, 17)) and steps[-1].eta_seconds == 0.0
    assert steps[0].learning_rate < steps[1].learning_rate  # warmup
    assert steps[-1].trained_tokens == result.trained_tokens > 0 and steps[-1].epoch == pytest.approx(2.0)
    assert [s for s, _ in evals] == [0, 10, 16]
    assert set(result.metrics) >= {
        "valid_loss",
        "valid_accuracy",
        "valid_f1",
        "train_loss",
        "trainable_parameters",
    }
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == len(result.history)
    merged = merge_delta("tiny-bert", result.delta_dir, tmp_path / "merged", models_dir=models_dir)  # type: ignore[arg-type]
    # A plain HF folder: loads without sparsegrad/peft and gives the run's final validation loss.
    plain = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged)
    rows = [__import__("json").loads(x) for x in sst2[1].read_text().splitlines()]
    losses = []
    with torch.no_grad():
        for row in rows:
            enc = tokenizer(row["text"], truncation=True, max_length=32, return_tensors="pt")
            losses.append(float(plain(**enc, labels=torch.tensor([row["label"]])).loss))
    assert sum(losses) / len(losses) == pytest.approx(result.metrics["valid_loss"], abs=1e-4)
    base = AutoModelForSequenceClassification.from_pretrained(models_dir / "tiny-bert")
    query = "bert.encoder.layer.0.attention.self.query.weight"
    attention_trained = not torch.equal(plain.state_dict()[query], base.state_dict()[query])
    assert attention_trained == (method == "full" or bool(extra.get("train_rest_dense")))


@pytest.mark.parametrize("method", ["sparsegrad", "lora"])
def test_dense_learning_rate_drives_only_the_dense_part(
    method: str, tmp_path: Path, sst2: tuple[Path, Path], models_dir: Path
) -> None:
    # Near-zero rate for the dense rest: attention stays (Adam moves a weight ~lr per step), the MLP moves.
    result = train(
        tmp_path / "run", sst2, models_dir, method, train_rest_dense=True, dense_learning_rate=1e-7
    )
    merged = merge_delta("tiny-bert", result.delta_dir, tmp_path / "merged", models_dir=models_dir)  # type: ignore[arg-type]
    after = AutoModelForSequenceClassification.from_pretrained(merged).state_dict()
    base = AutoModelForSequenceClassification.from_pretrained(models_dir / "tiny-bert").state_dict()

    def moved(name: str) -> float:
        return float((after[name] - base[name]).abs().max())

    assert moved("bert.encoder.layer.0.attention.self.query.weight") < 1e-5
    assert moved("bert.encoder.layer.0.intermediate.dense.weight") > 1e-4


def test_same_seed_same_result_other_seed_differs(
    tmp_path: Path, sst2: tuple[Path, Path], models_dir: Path
) -> None:
    a = train(tmp_path / "a", sst2, models_dir, "sparsegrad", n_epochs=1)
    b = train(tmp_path / "b", sst2, models_dir, "sparsegrad", n_epochs=1)
    c = train(tmp_path / "c", sst2, models_dir, "sparsegrad", n_epochs=1, seed=1)
    assert a.history == b.history and a.metrics == b.metrics
    same_tensors(delta_tensors(a), delta_tensors(b))
    assert a.history != c.history


class StopAfter:
    """should_stop hook: returns `reason` once `n` steps have been reported."""

    def __init__(self, n: int, reason: StopReason) -> None:
        self.n, self.reason, self.seen = n, reason, 0

    def on_step(self, info: StepInfo) -> None:
        self.seen = info.step

    def __call__(self) -> StopReason | None:
        return self.reason if self.seen >= self.n else None


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("sparsegrad", {}),
        ("sparsegrad", {"support_block": 2}),
        ("sparsegrad", {"per_layer_basis": True, "basis_probe_steps": 5}),
        ("sparsegrad", {"selection": "adam", "weight_decay": 0.1}),
        ("sparsegrad", {"max_delta_density": 0.02}),
        ("full", {}),
    ],
)
def test_paused_then_resumed_equals_uninterrupted(
    method: str, extra: dict[str, Any], tmp_path: Path, sst2: tuple[Path, Path], models_dir: Path
) -> None:
    hyper: dict[str, Any] = {"eval_every": 4, "checkpoint_every": 5, **extra}
    straight = train(tmp_path / "straight", sst2, models_dir, method, **hyper)
    stopper = StopAfter(7, "pause")
    saved: list[int] = []
    hooks = Hooks(on_step=stopper.on_step, should_stop=stopper, on_checkpoint=lambda s, d, m: saved.append(s))
    paused = train(tmp_path / "first", sst2, models_dir, method, hooks=hooks, **hyper)
    assert paused.status == "paused" and paused.step == 7 and paused.delta_dir is None
    assert paused.checkpoint_dir is not None and paused.checkpoint_dir.name == "step-7" and saved == [5, 7]
    # A new worker: a fresh work dir, only the checkpoint folder carried over.
    resumed = train(tmp_path / "second", sst2, models_dir, method, resume=paused.checkpoint_dir, **hyper)
    assert resumed.status == "completed" and resumed.step == 16
    assert resumed.history == straight.history and resumed.metrics == straight.metrics
    same_tensors(delta_tensors(resumed), delta_tensors(straight))
    if method == "sparsegrad":
        assert (paused.checkpoint_dir / "basis.safetensors").is_file()


def test_full_delta_written_with_the_old_file_names_still_merges(
    tmp_path: Path, sst2: tuple[Path, Path], models_dir: Path
) -> None:
    result = train(tmp_path / "run", sst2, models_dir, "full", n_epochs=1)
    assert result.delta_dir is not None and (result.delta_dir / "full_delta.json").is_file()
    new = merge_delta("tiny-bert", result.delta_dir, tmp_path / "new", models_dir=models_dir)
    (result.delta_dir / "full_delta.json").rename(result.delta_dir / "adapter_config.json")
    (result.delta_dir / "full_delta.safetensors").rename(result.delta_dir / "adapter_model.safetensors")
    old = merge_delta("tiny-bert", result.delta_dir, tmp_path / "old", models_dir=models_dir)
    same_tensors(load_file(str(new / "model.safetensors")), load_file(str(old / "model.safetensors")))


def test_checkpoint_events_report_the_delta_size_within_its_cap(
    tmp_path: Path, sst2: tuple[Path, Path], models_dir: Path
) -> None:
    events: list[dict[str, float]] = []
    hooks = Hooks(on_checkpoint=lambda s, d, m: events.append(m))
    result = train(
        tmp_path, sst2, models_dir, "sparsegrad", hooks=hooks, checkpoint_every=4, max_delta_density=0.02
    )
    assert len(events) == 3 and all({"delta_nnz", "delta_bytes"} <= set(e) for e in events)  # steps 4, 8, 12
    config = json.loads((result.delta_dir / "sparsegrad_delta.json").read_text())  # type: ignore[operator]
    cap = sum(round(0.02 * spec["shape"][0] * spec["shape"][1]) for spec in config["layers"].values())
    final_nnz = sum(spec["nnz"] for spec in config["layers"].values())
    final_bytes = sum(t.numel() * t.element_size() for t in delta_tensors(result).values())
    nnz = [e["delta_nnz"] for e in events] + [final_nnz]
    sizes = [e["delta_bytes"] for e in events] + [final_bytes]
    assert nnz == sorted(nnz) and nnz[-1] <= cap and nnz[0] > 0  # the union grows, within the cap
    assert sizes == sorted(sizes) and sizes[0] > 0  # entries, rows and columns only grow


def test_cancel_stops_within_one_step(tmp_path: Path, sst2: tuple[Path, Path], models_dir: Path) -> None:
    stopper = StopAfter(3, "cancel")
    steps: list[int] = []

    def on_step(info: StepInfo) -> None:
        steps.append(info.step)
        stopper.on_step(info)

    result = train(
        tmp_path, sst2, models_dir, "sparsegrad", hooks=Hooks(on_step=on_step, should_stop=stopper)
    )
    assert result.status == "cancelled" and result.step == 3 and steps == [1, 2, 3]
    assert result.checkpoint_dir is not None and (result.checkpoint_dir / "state.json").is_file()


def test_stop_requested_before_the_first_step(
    tmp_path: Path, sst2: tuple[Path, Path], models_dir: Path
) -> None:
    result = train(tmp_path, sst2, models_dir, "full", hooks=Hooks(should_stop=lambda: "pause"))
    assert result.status == "paused" and result.step == 0 and result.checkpoint_dir is not None


def test_string_labels_map_to_ids_and_are_kept_in_the_delta(
    tmp_path: Path, sst2: tuple[Path, Path], models_dir: Path
) -> None:
    names = {0: "negative", 1: "positive"}
    data = (relabel(sst2[0], tmp_path / "t.jsonl", names), relabel(sst2[1], tmp_path / "v.jsonl", names))
    result = train(tmp_path / "run", data, models_dir, "sparsegrad", n_epochs=1)
    config = __import__("json").loads((result.delta_dir / "sparsegrad_delta.json").read_text())  # type: ignore[operator]
    assert config["labels"] == ["negative", "positive"]
    merged = merge_delta("tiny-bert", result.delta_dir, tmp_path / "merged", models_dir=models_dir)  # type: ignore[arg-type]
    plain = AutoModelForSequenceClassification.from_pretrained(merged)
    assert plain.config.id2label == {0: "negative", 1: "positive"}


def test_float_labels_train_a_regressor(tmp_path: Path, sst2: tuple[Path, Path], models_dir: Path) -> None:
    scores = {0: 0.5, 1: 4.5}
    data = (relabel(sst2[0], tmp_path / "t.jsonl", scores), relabel(sst2[1], tmp_path / "v.jsonl", scores))
    result = train(tmp_path / "run", data, models_dir, "sparsegrad", n_epochs=1)
    assert {"valid_loss", "valid_pearson", "valid_spearman"} <= set(result.metrics)
    assert "valid_accuracy" not in result.metrics
    merged = merge_delta("tiny-bert", result.delta_dir, tmp_path / "merged", models_dir=models_dir)  # type: ignore[arg-type]
    assert AutoModelForSequenceClassification.from_pretrained(merged).config.num_labels == 1


def test_early_stopping_ends_the_run_with_a_delta(
    tmp_path: Path, sst2: tuple[Path, Path], models_dir: Path
) -> None:
    # A learning rate this high makes the validation loss bounce: patience 1 stops at the first bad eval.
    result = train(
        tmp_path, sst2, models_dir, "full", learning_rate=0.05, eval_every=1, early_stopping_patience=1
    )
    evals = [r["valid_loss"] for r in result.history if "valid_loss" in r and r["step"] > 0]
    assert result.status == "completed" and result.step < result.total_steps and result.delta_dir is not None
    # Every evaluation before the last improved on the best; the last did not.
    assert all(a > b for a, b in zip(evals[:-1], evals[1:-1], strict=False)) and evals[-1] >= min(evals[:-1])


@pytest.mark.slow
def test_minilm_learns_sst2_with_sparsegrad(tmp_path: Path) -> None:
    from training.testing import sst2_lines

    (tmp_path / "t.jsonl").write_text("".join(sst2_lines("train", 256)))
    (tmp_path / "v.jsonl").write_text("".join(sst2_lines("dev", 64)))
    hyper = {"n_epochs": 2, "batch_size": 16, "max_seq_length": 64, "learning_rate": 1e-3}
    spec = JobSpec(model="all-MiniLM-L6-v2", method="sparsegrad", hyperparameters=hyper, seed=3)
    result = run_training(spec, tmp_path / "t.jsonl", tmp_path / "v.jsonl", tmp_path / "w")
    assert result.history[0]["valid_accuracy"] < 0.6 and result.metrics["valid_accuracy"] > 0.75
