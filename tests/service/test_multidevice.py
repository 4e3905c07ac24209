"""Multi-device jobs through real processes: `sgft serve|worker|reaper` on PostgreSQL + Redis, a worker of two
devices (SGFT_WORKER_DEVICES=2: two gloo processes on CPU) that hands `"resources": {"devices": 2}` jobs to
torchrun. A tiny random BERT on 64 SST-2 lines."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.helpers import PG_ADMIN, pg_admin_exec, sst2_lines
from tests.service.stack import Stack, free_port, wait_for
from tests.service.test_integration import LONG, TINY, _create, _upload
from training.testing import make_tiny_model

pytestmark = pytest.mark.integration
TWO = {"resources": {"devices": 2}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("multidevice")
    name = f"sgft_md_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        pg_admin_exec(f"CREATE DATABASE {name}")
    except Exception as exc:
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGFT_")}
    env.update(
        {
            "SGFT_DATA_DIR": str(tmp / "data"),
            "SGFT_ARTIFACTS_URL": str(tmp / "data" / "artifacts"),
            "SGFT_PORT": str(free_port()),
            "SGFT_HEARTBEAT_TIMEOUT": "6",
            "SGFT_REAPER_INTERVAL": "1",
            "SGFT_QUEUED_GRACE": "60",
            "SGFT_JOB_RATE_LIMIT": "1000",
            "SGFT_MAX_DEVICES": "2",
            "SGFT_WORKER_DEVICES": "2",
            "SGFT_DATABASE_URL": PG_ADMIN.rsplit("/", 1)[0] + f"/{name}",
            "SGFT_BROKER_URL": f"redis://127.0.0.1:6379/{os.environ.get('SGFT_TEST_REDIS_DB', '11')}",
            "SGFT_QUEUE_PREFIX": f"md-{uuid.uuid4().hex[:8]}-",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
        }
    )
    (tmp / "logs").mkdir()
    s = Stack(env=env, logs=tmp / "logs", url=f"http://127.0.0.1:{env['SGFT_PORT']}")
    make_tiny_model(Path(env["SGFT_DATA_DIR"]) / "models", TINY)
    s.sgft("migrate")
    s.key = s.sgft("keys", "create", "--tenant", "multidevice").strip()
    s.start("api", "serve")
    s.start("worker", "worker")
    s.start("reaper", "reaper")
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop_all()
        pg_admin_exec(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def training_processes(job_id: str) -> list[int]:
    """Pids of the job's torchrun agent and ranks (their command lines name the job's run file)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if job_id in cmdline and ("worker.rank" in cmdline or "worker.agent" in cmdline):
            out.append(int(entry.name))
    return out


def test_a_two_device_job_runs_under_torchrun_and_succeeds(stack: Stack) -> None:
    train = _upload(stack, sst2_lines("train", 64), "t.jsonl")
    hyper = {"n_epochs": 1, "batch_size": 8, "max_seq_length": 32, "basis_steps": 2, "learning_rate": 1e-3}
    job_id = _create(stack, train, hyper, **TWO)
    assert stack.job(job_id)["resources"] == {"devices": 2}
    done = stack.wait_status(job_id, {"succeeded", "failed"})
    assert done["status"] == "succeeded", (done, stack.tail())
    assert done["resources"] == {"devices": 2} and len(done["result_files"]) == 2
    assert done["progress"]["step"] == done["progress"]["total_steps"] == 8
    messages = [e["message"] for e in stack.events(job_id)]
    assert any(m.startswith("Data parallel on 2 processes") for m in messages), messages
    assert sum(m.startswith("Training finished at step 8") for m in messages) == 1  # rank 0 alone said it
    assert not training_processes(job_id)


def test_sigkilled_worker_leaves_no_rank_and_the_reaper_resumes_the_job(stack: Stack) -> None:
    train = _upload(stack, sst2_lines("train", 64), "t.jsonl")
    job_id = _create(stack, train, {**LONG, "max_steps": 400, "basis_steps": 2}, **TWO)
    with stack.client() as c:

        def checkpointed() -> int:
            data = c.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
            return int(data[0]["step_number"]) if data else 0

        try:
            ckpt = wait_for(checkpointed, 120, "a checkpoint")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {stack.job(job_id)}\n{stack.tail()}") from None
    before = training_processes(job_id)
    assert len(before) == 3, before  # the agent and two ranks
    stack.kill("worker", signal.SIGKILL)  # the worker's main process and pool child, not the ranks' sessions
    wait_for(lambda: not training_processes(job_id), 30, "every rank to exit with its worker")
    requeued = wait_for(
        lambda: next((e for e in stack.events(job_id) if e["message"].startswith("Re-queued")), None),
        60,
        "the reaper to re-queue the job",
    )
    assert "resume from step" in requeued["message"]
    stack.start("worker", "worker")
    wait_for(lambda: any(e["message"].startswith("Attempt 2") for e in stack.events(job_id)), 60, "attempt 2")
    resumed = [e["message"] for e in stack.events(job_id) if e["message"].startswith("Attempt 2")]
    assert "from checkpoint at step" in resumed[0] and int(resumed[0].rsplit(" ", 1)[-1]) >= ckpt
    wait_for(lambda: (stack.job(job_id)["progress"]["step"] or 0) > ckpt, 120, "steps past the checkpoint")
    with stack.client() as c:
        assert c.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").status_code == 200
    done = stack.wait_status(job_id, {"cancelled"})
    assert done["attempts"] == 2
    wait_for(lambda: not training_processes(job_id), 30, "the group to end after the cancel")
