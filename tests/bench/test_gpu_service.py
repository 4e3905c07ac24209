"""The GPU check's service section, rehearsed on CPU: one job through `sgft run` (API + worker on SQLite)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.deploy.project import REPO


@pytest.mark.integration
def test_one_job_through_sgft_run_succeeds_on_cpu() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the worker trains on CUDA where there is one
    cmd = [sys.executable, "-m", "bench.gpu_service", "--timeout", "120", "--expect-device", device]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "The job has successfully completed" in done.stdout
    precision = "bf16" if device == "cuda" else "fp32"  # SGFT_PRECISION=auto
    assert f"Precision {precision} on {device}" in done.stdout and "sgft run stopped cleanly" in done.stdout
