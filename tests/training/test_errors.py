"""Failures become typed TrainingErrors that say what to do: bad data, unknown model, task mismatch, OOM."""

from __future__ import annotations

from pathlib import Path

import pytest

from training import DataError, JobSpec, ModelLoadError, OutOfMemory, TrainingError, run_training
from training.hparams import resolve
from training.loop import guard
from training.testing import chat_records, write_jsonl


def _run(
    tmp: Path, train: Path, models_dir: Path, model: str = "tiny-bert", valid: Path | None = None
) -> None:
    spec = JobSpec(model=model, method="full", hyperparameters={"max_steps": 1, "batch_size": 2})
    run_training(spec, train, valid, tmp / "w", models_dir=models_dir)


def test_invalid_file_lists_lines(tmp_path: Path, models_dir: Path) -> None:
    train = tmp_path / "t.jsonl"
    train.write_text('{"text": "a", "label": 0}\n{"text": "b"}\nnot json\n')
    with pytest.raises(DataError) as err:
        _run(tmp_path, train, models_dir)
    assert err.value.message.startswith("training file: line 2: missing key 'label'; line 3: invalid JSON")
    assert err.value.code == "invalid_training_data" and err.value.param == "training_file"


def test_validation_label_never_seen_in_training(tmp_path: Path, models_dir: Path) -> None:
    train = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    valid = write_jsonl(tmp_path / "v.jsonl", [{"text": "a", "label": "z"}, {"text": "b", "label": "x"}])
    with pytest.raises(DataError, match="label\\(s\\) 'z'"):
        _run(tmp_path, train, models_dir, valid=valid)


def test_unknown_model_and_task_mismatch(tmp_path: Path, models_dir: Path) -> None:
    train = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}])
    with pytest.raises(ModelLoadError, match="unknown model 'nope'; available: all-MiniLM-L6-v2"):
        _run(tmp_path, train, models_dir, model="nope")
    with pytest.raises(DataError, match="classification data .* 'tiny-llama' is a causal_lm model"):
        _run(tmp_path, train, models_dir, model="tiny-llama")
    chat = write_jsonl(tmp_path / "c.jsonl", chat_records(2))
    with pytest.raises(DataError, match="chat data"):
        _run(tmp_path, chat, models_dir, model="tiny-bert")


def test_broken_model_folder_is_a_model_load_error(tmp_path: Path, models_dir: Path) -> None:
    broken = tmp_path / "models" / "broken"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text('{"model_type": "bert"}')
    train = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}])
    with pytest.raises(ModelLoadError, match="'broken'"):
        _run(tmp_path, train, tmp_path / "models", model="broken")


def test_out_of_memory_and_runtime_failures_are_typed() -> None:
    hp = resolve({"batch_size": 64}, 100, "classification", "full", 512)
    with pytest.raises(OutOfMemory) as err, guard(hp, "step 3"):
        raise MemoryError()
    assert "batch_size=64" in err.value.message and "lower batch_size" in err.value.message
    assert err.value.code == "out_of_memory"
    with (
        pytest.raises(TrainingError, match="training failed during step 3: shapes do not match"),
        guard(hp, "step 3"),
    ):
        raise RuntimeError("shapes do not match")
    with pytest.raises(KeyError), guard(hp, "step 3"):  # a bug stays a bug (the worker calls it internal)
        raise KeyError("x")


def test_resume_with_other_data_is_refused(tmp_path: Path, sst2: tuple[Path, Path], models_dir: Path) -> None:
    spec = JobSpec(model="tiny-bert", method="full", hyperparameters={"max_steps": 3, "batch_size": 4})
    first = run_training(
        spec,
        sst2[0],
        None,
        tmp_path / "a",
        models_dir=models_dir,
        hooks=__import__("training").Hooks(should_stop=lambda: "pause"),
    )
    assert first.checkpoint_dir is not None
    with pytest.raises(TrainingError, match="different the training data"):
        run_training(
            spec, sst2[1], None, tmp_path / "b", resume_from=first.checkpoint_dir, models_dir=models_dir
        )
