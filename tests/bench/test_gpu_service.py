"""The GPU check's service section, rehearsed on CPU: one job through `sgft run` (API + worker on SQLite)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.deploy.project import REPO


@pytest.mark.integration
def test_one_job_through_sgft_run_succeeds_on_cpu() -> None:
    cmd = [sys.executable, "-m", "bench.gpu_service", "--timeout", "120", "--expect-device", "cpu"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "The job has successfully completed" in done.stdout
    assert "Precision fp32 on cpu" in done.stdout and "sgft run stopped cleanly" in done.stdout
