"""The CLI's pure parts: job body from flags/YAML, value parsing, the progress line."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from cli.commands import (
    build_job_body,
    estimate_line,
    fmt_duration,
    parse_value,
    progress_line,
    register,
    should_confirm,
    shown_status,
)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sgft")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def no_upload(path: Path) -> str:
    raise AssertionError(f"unexpected upload of {path}")


def test_flags_build_an_openai_shaped_body() -> None:
    args = parse(
        [
            "jobs",
            "create",
            "--model",
            "m",
            "--training-file",
            "file-abc",
            "--method",
            "lora",
            "--n-epochs",
            "2",
            "--learning-rate-multiplier",
            "0.5",
            "--hp",
            "max_steps=7",
            "--seed",
            "3",
        ]
    )
    body = build_job_body(args, no_upload)
    assert body == {
        "model": "m",
        "training_file": "file-abc",
        "seed": 3,
        "method": {
            "type": "lora",
            "lora": {"hyperparameters": {"n_epochs": 2, "learning_rate_multiplier": 0.5, "max_steps": 7}},
        },
    }


def test_config_yaml_with_flags_overriding(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "a", "label": 0}\n')
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        "model: all-MiniLM-L6-v2\ntraining_file: train.jsonl\nsuffix: s1\n"
        "method:\n  type: sparsegrad\n  sparsegrad:\n    hyperparameters: {density: 0.02, n_epochs: 1}\n"
    )
    uploaded: list[Path] = []

    def upload(path: Path) -> str:
        uploaded.append(path)
        return "file-new"

    cwd = os.getcwd()
    os.chdir(tmp_path)  # the config's relative dataset path is a local file here
    try:
        body = build_job_body(parse(["jobs", "create", "--config", str(cfg), "--n-epochs", "3"]), upload)
    finally:
        os.chdir(cwd)
    assert uploaded == [Path("train.jsonl")]
    assert body["training_file"] == "file-new"
    assert body["suffix"] == "s1"
    assert body["method"] == {
        "type": "sparsegrad",
        "sparsegrad": {"hyperparameters": {"density": 0.02, "n_epochs": 3}},
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["jobs", "create", "--training-file", "file-x"], "a model is required"),
        (["jobs", "create", "--model", "m"], "a training file is required"),
        (["jobs", "create", "--model", "m", "--training-file", "missing.jsonl"], "neither a file id"),
        (["jobs", "create", "--model", "m", "--training-file", "file-x", "--hp", "oops"], "KEY=VALUE"),
    ],
)
def test_bad_job_input_names_the_problem(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_job_body(parse(argv), no_upload)


def test_unknown_config_field(tmp_path: Path) -> None:
    cfg = tmp_path / "job.yaml"
    cfg.write_text("model: m\ntraining_file: file-x\nepochs: 3\n")
    with pytest.raises(ValueError, match=r"unknown job fields \['epochs'\]"):
        build_job_body(parse(["jobs", "create", "--config", str(cfg)]), no_upload)


def test_values_and_durations() -> None:
    assert [parse_value(v) for v in ("3", "0.5", "auto", "true", "dynamic")] == [
        3,
        0.5,
        "auto",
        True,
        "dynamic",
    ]
    assert [fmt_duration(s) for s in (None, 5, 65, 3725)] == ["--", "5s", "1m05s", "1h02m"]


def test_progress_line_shows_step_loss_and_eta() -> None:
    job = {
        "status": "running",
        "progress": {"step": 25, "total_steps": 100, "seconds_remaining": 90},
        "metrics": {"train_loss": 0.51234, "valid_loss": 0.6},
    }
    line = progress_line(job, width=20)
    assert line.startswith("[#####---------------]  25%")
    assert "step 25/100" in line and "train loss 0.5123" in line and "valid loss 0.6000" in line
    assert "eta 1m30s" in line and line.endswith("running")
    done = progress_line({"status": "succeeded", "progress": {"step": 0, "total_steps": None}, "metrics": {}})
    assert "100%" in done and "eta" not in done
    # A cancel or pause asked of a running job shows as what it leads to until the job stops.
    assert progress_line({**job, "stop_requested": "cancel"}).endswith("cancelling")
    assert shown_status({**job, "stop_requested": "pause"}) == "pausing"
    assert shown_status({"status": "paused", "stop_requested": None}) == "paused"


def test_confirmation_only_on_a_terminal_above_30_minutes() -> None:
    long, short = 31 * 60.0, 29 * 60.0
    assert should_confirm(long, yes=False, stdin_tty=True, stdout_tty=True)
    assert not should_confirm(long, yes=True, stdin_tty=True, stdout_tty=True)  # --yes
    assert not should_confirm(long, yes=False, stdin_tty=False, stdout_tty=True)  # piped input
    assert not should_confirm(long, yes=False, stdin_tty=True, stdout_tty=False)  # piped output
    assert not should_confirm(short, yes=False, stdin_tty=True, stdout_tty=True)
    assert not should_confirm(None, yes=False, stdin_tty=True, stdout_tty=True)  # unknown duration


def test_estimate_line() -> None:
    est = {
        "total_steps": 380, "n_epochs": 10, "batch_size": 8, "training_examples": 300,
        "estimated_seconds": 2104, "throughput_source": "table",
    }  # fmt: skip
    line = estimate_line(est)
    assert line == (
        "estimate: 380 steps (10 epochs x batch 8) on 300 examples, about 35m04s (table of measured rates)"
    )
    assert "duration unknown" in estimate_line({**est, "estimated_seconds": None, "throughput_source": None})


def test_devices_flag_asks_for_resources() -> None:
    args = parse(["jobs", "create", "--model", "m", "--training-file", "file-abc", "--devices", "2"])
    assert build_job_body(args, no_upload)["resources"] == {"devices": 2}
    assert "resources" not in build_job_body(
        parse(["jobs", "create", "--model", "m", "--training-file", "file-a"]), no_upload
    )
