"""The real `sgft` command (a subprocess) against the running API and worker."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.web.service import REPO, SGFT, TINY_MODEL, Service, sst2_slice

pytestmark = pytest.mark.integration


def sgft(service: Service, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return service.sgft(*args, timeout=timeout)


def test_bad_dataset_is_refused_with_its_lines(service: Service, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok", "label": 0}\n{"label": 1}\n')
    done = sgft(service, "files", "upload", str(bad))
    assert done.returncode == 4
    assert "HTTP 400" in done.stderr and "line 2" in done.stderr and "text" in done.stderr


def test_upload_create_watch_list_download(service: Service, tmp_path: Path) -> None:
    train = sst2_slice(tmp_path / "train.jsonl", 48)
    up = sgft(service, "files", "upload", str(train), "--json")
    assert up.returncode == 0, up.stderr
    file_id = json.loads(up.stdout)["id"]

    created = sgft(
        service, "jobs", "create", "--model", TINY_MODEL, "--training-file", file_id,
        "--method", "sparsegrad", "--n-epochs", "1", "--batch-size", "8", "--density", "0.05",
        "--suffix", "cli", "--seed", "7", "--json",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    job = json.loads(created.stdout)
    assert job["status"] in ("queued", "validating_files", "running") and job["seed"] == 7

    watched = sgft(service, "jobs", "watch", job["id"], "--interval", "0.5")
    assert watched.returncode == 0, watched.stdout + watched.stderr
    final = service.api("GET", f"/v1/fine_tuning/jobs/{job['id']}")
    total = final["progress"]["total_steps"]
    lines = watched.stdout.splitlines()
    assert any("train_loss=" in line for line in lines)  # one plain line per metrics event (not a tty)
    assert lines[-1].endswith("succeeded") and "100%" in lines[-1] and f"step {total}/{total}" in lines[-1]

    # On a terminal the same command redraws one progress line in place.
    master, slave = pty.openpty()
    proc = subprocess.run([*SGFT, "jobs", "watch", job["id"]], cwd=REPO, env=service.env,
                          stdout=slave, stderr=subprocess.PIPE, timeout=60)  # fmt: skip
    os.close(slave)
    screen = os.read(master, 65536).decode()
    os.close(master)
    assert proc.returncode == 0
    assert f"\r\x1b[2K[{'#' * 24}] 100%  step {total}/{total}" in screen and screen.endswith("succeeded\r\n")

    listed = sgft(service, "jobs", "list", "--json")
    assert listed.returncode == 0
    assert job["id"] in [j["id"] for j in json.loads(listed.stdout)["data"]]
    table = sgft(service, "jobs", "list")
    assert job["id"] in table.stdout and "succeeded" in table.stdout

    out = tmp_path / "results"
    got = sgft(service, "jobs", "download", job["id"], "-o", str(out), "--json")
    assert got.returncode == 0, got.stderr
    files = json.loads(got.stdout)["files"]
    assert [f["id"] for f in files] == final["result_files"]
    for f in files:
        assert Path(f["path"]).parent == out and Path(f["path"]).stat().st_size == f["bytes"] > 0

    # --merged asks a worker to merge the delta into the base model, waits, and downloads that archive.
    merged = sgft(service, "jobs", "download", job["id"], "--merged", "-o", str(out), "--json")
    assert merged.returncode == 0, merged.stderr
    (m,) = json.loads(merged.stdout)["files"]
    after = service.api("GET", f"/v1/fine_tuning/jobs/{job['id']}")
    assert after["merge_status"] == "succeeded" and after["result_files"] == [*final["result_files"], m["id"]]
    names = tarfile.open(m["path"]).getnames()
    assert any(n.endswith("config.json") for n in names) and any(n.endswith(".safetensors") for n in names)
    again = sgft(service, "jobs", "download", job["id"], "-o", str(tmp_path / "again"), "--json")
    assert [f["id"] for f in json.loads(again.stdout)["files"]] == final[
        "result_files"
    ]  # the delta, not the merge


def test_create_from_config_with_a_local_path_then_cancel(service: Service, tmp_path: Path) -> None:
    """--config job.yaml naming a local file uploads it; cancel ends the job and `watch` exits 2."""
    sst2_slice(tmp_path / "long.jsonl", 256)
    config = tmp_path / "job.yaml"
    config.write_text(
        f"model: {TINY_MODEL}\ntraining_file: long.jsonl\n"
        "method:\n  type: sparsegrad\n  sparsegrad:\n    hyperparameters: {n_epochs: 50, batch_size: 8}\n"
    )
    created = subprocess.run(
        [*SGFT, "jobs", "create", "--config", str(config), "--json"],
        cwd=tmp_path, env=service.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    job = json.loads(created.stdout)
    assert job["training_file"].startswith("file-")
    assert job["method"]["type"] == "sparsegrad"

    cancelled = sgft(service, "jobs", "cancel", job["id"], "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    answer = json.loads(cancelled.stdout)
    assert answer["id"] == job["id"] and answer["status"] in ("cancelling", "cancelled")  # never "running"
    watched = sgft(service, "jobs", "watch", job["id"], "--json", "--interval", "0.5")
    assert watched.returncode == 2, watched.stdout + watched.stderr
    assert json.loads(watched.stdout.splitlines()[-1])["status"] == "cancelled"


def test_errors_are_clear_and_non_zero(service: Service) -> None:
    wrong_key = sgft(service, "jobs", "list", "--api-key", "sgft-000000000000-wrong")
    assert wrong_key.returncode == 3 and "HTTP 401" in wrong_key.stderr
    missing = sgft(service, "jobs", "watch", "ftjob-000000000000000000000000")
    assert missing.returncode == 4 and "No such" in missing.stderr
    no_server = sgft(service, "jobs", "list", "--base-url", "http://127.0.0.1:9")
    assert no_server.returncode == 3 and "cannot reach the service" in no_server.stderr
    no_model = sgft(service, "jobs", "create", "--training-file", "file-x")
    assert no_model.returncode == 5 and "a model is required" in no_model.stderr


def test_create_prints_the_estimate_and_asks_only_on_a_terminal(service: Service, tmp_path: Path) -> None:
    """A long job (50 epochs of 900 lines on MiniLM: over an hour by the measured table) asks on a terminal
    and is not created on "n"; piped, it is never prompted: the estimate is printed and the job created."""
    train = sst2_slice(tmp_path / "train.jsonl", 900)
    file_id = json.loads(sgft(service, "files", "upload", str(train), "--json").stdout)["id"]
    args = [
        "jobs", "create", "--model", "all-MiniLM-L6-v2", "--training-file", file_id, "--n-epochs", "50",
    ]  # fmt: skip

    def jobs() -> int:
        return len(json.loads(sgft(service, "jobs", "list", "--limit", "100", "--json").stdout)["data"])

    before = jobs()
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [*SGFT, *args], cwd=REPO, env=service.env, stdin=follower, stdout=follower, stderr=follower
    )
    os.close(follower)
    seen = b""
    while b"[y/N]" not in seen:
        seen += os.read(leader, 4096)
    os.write(leader, b"n\n")
    assert proc.wait(timeout=60) == 1
    os.close(leader)
    assert b"estimate: " in seen and b"Create it?" in seen
    assert jobs() == before  # answered "n": nothing created
    piped = subprocess.run(
        [*SGFT, *args], cwd=REPO, env=service.env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    assert "estimate: 2850 steps (50 epochs x batch 16) on 900 examples, about 1h" in piped.stderr
    assert "[y/N]" not in piped.stdout + piped.stderr
    job_id = piped.stdout.split()[0]
    assert jobs() == before + 1
    assert sgft(service, "jobs", "cancel", job_id).returncode == 0


def test_hyperparameters_lists_the_service_table(service: Service) -> None:
    from rules.hparam_bounds import PARAMS

    table = sgft(service, "jobs", "hyperparameters")
    assert table.returncode == 0, table.stderr
    names = [line.split()[0] for line in table.stdout.splitlines()[1:] if line.strip()]
    assert set(PARAMS) <= set(names)
    assert "n_epochs" in table.stdout and "[1, 50]" in table.stdout and "dynamic, fixed" in table.stdout
