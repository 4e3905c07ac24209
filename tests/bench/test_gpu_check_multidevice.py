"""The GPU check's multi-device section rehearsed here: `bench/gpu_check.sh` with the process count as a
parameter, on CPU with gloo and 2 processes (on a machine with several GPUs the same section runs nccl)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_multidevice_section_runs_two_gloo_processes_that_match_one(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_WHEELS": "",
        "GPU_CHECK_SECTIONS": "multidevice",
        "GPU_CHECK_NPROC": "2",
        "PYTHON": sys.executable,
        "OUT": str(tmp_path),
    }
    done = subprocess.run(
        ["bash", "bench/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "multi-device: bench.ddp_step, 1 against 2 processes" in log and "all sections passed" in log
    rows = [line for line in log.splitlines() if line.startswith("| 2 | 1 |")]  # 2 processes, 1 thread each
    assert rows, log[-3000:]
    assert (tmp_path / "ddp_step.json").exists()
