"""Faults against real processes: `sgft serve`, three `sgft worker`s and `sgft reaper` on a private
PostgreSQL and a private Redis (both restarted here; the shared servers on 5432/6379 are never touched).

Every test ends with each job in its correct final state, none lost, none run to completion twice, and
exactly one set of results per succeeded job (FaultStack.assert_final). Jobs train a tiny random BERT on 64
SST-2 lines; the workers' fault-injection `sitecustomize` makes each training step sleep 0.1 s (so a job can
be killed mid-training), makes a merge sleep 4 s, and gives them a memory budget of 300 tokens per batch
(tests/hardening/inject).
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.hardening.servers import PostgresServer, RedisServer
from tests.hardening.stack import FaultStack
from tests.service.helpers import sst2_lines
from tests.service.stack import free_port, wait_for

pytestmark = pytest.mark.integration
HEARTBEAT_TIMEOUT = 5
WORKERS = ("worker-a", "worker-b", "worker-c")


def hyper(epochs: int, **extra: int) -> dict[str, int]:
    """8 steps per epoch (64 lines, batch 8) of at most 8 x 32 = 256 tokens: inside the memory budget."""
    base = {
        "n_epochs": epochs,
        "batch_size": 8,
        "max_seq_length": 32,
        "checkpoint_every": 4,
        "basis_steps": 2,
    }
    return {**base, **extra}


def _mount_tmpfs(target: Path, size: str) -> bool:
    target.mkdir(parents=True)
    if os.geteuid() != 0:
        return False
    return (
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)]).returncode == 0
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    from training.testing import make_tiny_model

    tmp = tmp_path_factory.mktemp("faults")
    pg, redis = PostgresServer(), RedisServer()
    try:
        pg.init()
        redis.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        pg.destroy()
        pytest.skip(f"cannot run a private PostgreSQL/Redis here: {exc}")
    data = tmp / "data"
    artifacts = data / "artifacts"
    tmpfs = _mount_tmpfs(artifacts, "64m")  # a small real filesystem: the disk-full test fills it
    make_tiny_model(data / "models", "tiny-bert")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGFT_") and k != "PYTHONPATH"}
    env.update(
        {
            "SGFT_DATA_DIR": str(data),
            "SGFT_ARTIFACTS_URL": str(artifacts),
            "SGFT_DATABASE_URL": pg.url,
            "SGFT_BROKER_URL": redis.url,
            "SGFT_PORT": str(port),
            "SGFT_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
            "SGFT_REAPER_INTERVAL": "0.5",
            "SGFT_QUEUED_GRACE": "4",
            "SGFT_MAX_ATTEMPTS": "3",
            "SGFT_JOB_RATE_LIMIT": "1000",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
        }
    )
    (tmp / "logs").mkdir()
    faults = {
        "SGFT_FAULT_STEP_SLEEP": "0.1",
        "SGFT_FAULT_MAX_BATCH_TOKENS": "300",
        "SGFT_FAULT_MERGE_SLEEP": "4",
    }
    s = FaultStack(env, tmp / "logs", f"http://127.0.0.1:{port}", faults)
    s.pg, s.redis, s.tmpfs, s.artifacts = pg, redis, tmpfs, artifacts  # type: ignore[attr-defined]
    try:
        s.sgft("migrate")
        s.key = s.sgft("keys", "create", "--tenant", "faults").strip()
        s.start("api", "serve")
        s.start("reaper", "reaper")
        for name in WORKERS:
            s.start(name, "worker")
        s.wait_ready()
        s.train = s.upload(sst2_lines("train", 64))  # type: ignore[attr-defined]
        yield s
    finally:
        s.stop_all()
        s.dispose()
        redis.stop()
        pg.destroy()
        if tmpfs:
            subprocess.run(["umount", "-l", str(artifacts)])


def test_sigkill_mid_training_resumes_then_fails_past_the_attempt_limit(stack: FaultStack) -> None:
    """Two jobs run side by side; each time one has checkpointed past its last kill, the worker running it
    (main process and pool child) gets SIGKILL and a fresh worker starts under the same name. `survivor`
    is killed twice and succeeds on attempt 3 of 3; `doomed` is killed three times and fails."""
    train = stack.train  # type: ignore[attr-defined]
    survivor, doomed = (stack.create(train, **hyper(8)) for _ in range(2))  # 64 steps each
    left = {survivor: 2, doomed: 3}
    killed_at: dict[str, list[int]] = {survivor: [0], doomed: [0]}

    def kill_next() -> bool:
        for job_id in [j for j, n in left.items() if n]:
            row = stack.row(job_id)
            victim = stack.worker_running(job_id)
            if victim and row.status == "running" and (row.checkpoint_step or 0) > killed_at[job_id][-1]:
                stack.kill(victim)
                stack.start(victim, "worker")
                killed_at[job_id].append(int(row.checkpoint_step or 0))
                left[job_id] -= 1
        return not any(left.values())

    try:
        wait_for(kill_next, 400, "five kills after fresh checkpoints", interval=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; kills left {left}\n{stack.tail()}") from None
    done = stack.wait_terminal(survivor, timeout=180)
    assert done["status"] == "succeeded" and done["attempts"] == 3
    starts = [e["message"] for e in stack.events(survivor) if e["message"].startswith("Attempt")]
    assert len(starts) == 3
    for attempt, ckpt in zip(starts[1:], killed_at[survivor][1:], strict=True):  # resumed, never restarted
        assert "from checkpoint at step" in attempt and int(attempt.rsplit(" ", 1)[-1]) >= ckpt
    failed = stack.wait_terminal(doomed, timeout=180)
    assert failed["status"] == "failed" and failed["attempts"] == 3
    assert failed["error"]["code"] == "worker_lost"
    assert "lost 3 times (max_attempts=3)" in failed["error"]["message"]
    stack.assert_final({survivor: "succeeded", doomed: "failed"})


def test_redis_restarted_empty_with_jobs_queued_and_running(stack: FaultStack) -> None:
    jobs = [stack.create(stack.train, **hyper(3)) for _ in range(5)]  # type: ignore[attr-defined]
    wait_for(
        lambda: sum(stack.row(j).status == "running" for j in jobs) >= 2, 60, "jobs to start", interval=0.1
    )
    queued = [j for j in jobs if stack.row(j).status == "queued"]
    assert queued, "with 3 workers and 5 jobs some must still wait in the queue"
    log_before = len((stack.logs / "reaper.log").read_text())
    stack.redis.restart()  # type: ignore[attr-defined]  # every queued message is gone
    for job_id in jobs:
        stack.wait_terminal(job_id)
    stack.assert_final(dict.fromkeys(jobs, "succeeded"))
    resent = (stack.logs / "reaper.log").read_text()[log_before:]  # only re-sends after the restart
    assert any(f"re-sent queued job {j}" in resent for j in queued), resent


def test_postgres_restarted_during_a_run(stack: FaultStack) -> None:
    job_id = stack.create(stack.train, **hyper(6))  # type: ignore[attr-defined]
    stack.wait_checkpoint(job_id)
    stack.pg.stop("immediate")  # type: ignore[attr-defined]  # every connection dropped at once
    try:
        ready = httpx.get(f"{stack.url}/readyz", timeout=30)
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"].startswith("unavailable")
        with stack.client() as c:
            answer = c.get(f"/v1/fine_tuning/jobs/{job_id}")
        assert answer.status_code == 503 and answer.json()["error"]["type"] == "service_unavailable"
        assert "Traceback" not in answer.text
        time.sleep(2)
    finally:
        stack.pg.start()  # type: ignore[attr-defined]
    stack.wait_ready()
    done = stack.wait_terminal(job_id)
    assert done["status"] == "succeeded", done
    stack.assert_final({job_id: "succeeded"})


def test_api_restarted_while_jobs_run(stack: FaultStack) -> None:
    jobs = [stack.create(stack.train, **hyper(3)) for _ in range(2)]  # type: ignore[attr-defined]
    wait_for(lambda: any(stack.row(j).status == "running" for j in jobs), 60, "a job to start", interval=0.1)
    stack.kill("api")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{stack.url}/healthz", timeout=5)
    stack.start("api", "serve")
    stack.wait_ready()
    for job_id in jobs:
        stack.wait_terminal(job_id)
    stack.assert_final(dict.fromkeys(jobs, "succeeded"))


def _workers_alive(stack: FaultStack) -> bool:
    return all(stack.procs[name].poll() is None for name in WORKERS)


def test_out_of_memory_fails_the_job_clearly_and_the_worker_takes_the_next(stack: FaultStack) -> None:
    train = stack.train  # type: ignore[attr-defined]
    oom = stack.create(train, n_epochs=1, batch_size=32, max_seq_length=32)  # > 300 tokens per batch
    failed = stack.wait_terminal(oom)
    assert failed["status"] == "failed" and failed["error"]["code"] == "out_of_memory", failed["error"]
    assert "batch_size" in failed["error"]["message"]  # says what to lower
    assert _workers_alive(stack)
    after = stack.create(train, **hyper(1))
    assert stack.wait_terminal(after)["status"] == "succeeded"
    stack.assert_final({oom: "failed", after: "succeeded"})


def _fill(folder: Path) -> Path:
    """Write zeros into `folder` until its filesystem reports ENOSPC; returns the filler file."""
    filler = folder / f"filler-{uuid.uuid4().hex}"
    block = b"\0" * (1 << 20)
    with pytest.raises(OSError) as info, filler.open("wb") as fh:
        while True:
            fh.write(block)
            fh.flush()
    assert info.value.errno == errno.ENOSPC
    return filler


def test_disk_full_while_saving_results(stack: FaultStack) -> None:
    if not stack.tmpfs:  # type: ignore[attr-defined]
        pytest.skip("mounting a small tmpfs needs root (CAP_SYS_ADMIN)")
    train = stack.train  # type: ignore[attr-defined]
    job_id = stack.create(train, **hyper(2, checkpoint_every=1000))  # no checkpoint before the results
    wait_for(lambda: stack.row(job_id).step >= 1, 60, "training to start", interval=0.1)
    filler = _fill(stack.artifacts)  # type: ignore[attr-defined]
    try:
        failed = stack.wait_terminal(job_id)
    finally:
        filler.unlink()
    assert failed["status"] == "failed" and failed["error"]["code"] == "storage_full", failed["error"]
    assert "No space left" in failed["error"]["message"]
    assert _workers_alive(stack)
    after = stack.create(train, **hyper(1))
    assert stack.wait_terminal(after)["status"] == "succeeded"
    stack.assert_final({job_id: "failed", after: "succeeded"})


def _scratch(stack: FaultStack, job_id: str) -> list[Path]:
    return sorted((Path(stack.env["SGFT_DATA_DIR"]) / "work").glob(f"{job_id}-*"))


def _restart(stack: FaultStack, name: str) -> None:
    stack.kill(name)
    stack.start(name, "worker")


def test_merge_whose_worker_dies_is_requeued_and_succeeds_and_scratch_is_swept(stack: FaultStack) -> None:
    job_id = stack.create(stack.train, **hyper(1))  # type: ignore[attr-defined]
    assert stack.wait_terminal(job_id)["status"] == "succeeded"
    with stack.client() as c:
        assert c.post(f"/v1/fine_tuning/jobs/{job_id}/merge").json()["merge_status"] == "queued"
    row = wait_for(
        lambda: (r := stack.row(job_id)).merge_status == "running" and r.merge_worker_id and r,
        60,
        "the merge to start",
        interval=0.1,
    )
    pid = int(row.merge_worker_id.split(":")[1])
    victim = next(name for name, p in stack.procs.items() if p.pid == os.getpgid(pid))
    _restart(stack, victim)  # SIGKILL mid-merge; its start-up sweep keeps the folder: the merge still runs
    assert [p.name for p in _scratch(stack, job_id)] and stack.row(job_id).merge_status == "running"
    with stack.client() as c:  # a repeated request changes nothing while the merge is pending
        assert c.post(f"/v1/fine_tuning/jobs/{job_id}/merge").json()["merge_status"] in ("running", "queued")

    def merged() -> dict[str, object] | None:
        job = stack.job(job_id)
        assert job["merge_status"] != "failed", stack.events(job_id)[-3:]
        return job if job["merge_status"] == "succeeded" else None

    job = wait_for(merged, 120, "the re-queued merge to succeed")
    assert len(job["result_files"]) == 3  # type: ignore[arg-type]
    messages = [e["message"] for e in stack.events(job_id)]
    assert any(m.startswith("Merge re-queued after attempt 1") for m in messages), messages[-8:]
    assert stack.row(job_id).merge_attempts == 2
    _restart(stack, victim)  # the next start sweeps the dead attempt's folder
    wait_for(lambda: not _scratch(stack, job_id), 60, "the dead merge's scratch folder to be swept")


def test_resume_of_a_running_job_is_refused_and_a_pending_cancel_wins_over_pause(stack: FaultStack) -> None:
    first, second = (stack.create(stack.train, **hyper(8)) for _ in range(2))  # type: ignore[attr-defined]
    for job_id in (first, second):
        wait_for(lambda j=job_id: stack.row(j).status == "running", 60, "the job to start", interval=0.1)
    with stack.client() as c:
        resumed = c.post(f"/v1/fine_tuning/jobs/{first}/resume")
        assert resumed.status_code == 409 and resumed.json()["error"]["code"] == "invalid_state"
        assert stack.row(first).status == "running" and stack.row(first).attempts == 1  # not restarted
        assert c.post(f"/v1/fine_tuning/jobs/{first}/cancel").status_code == 200
        paused = c.post(f"/v1/fine_tuning/jobs/{first}/pause")
        assert paused.status_code == 409 and "cancel pending" in paused.json()["error"]["message"]
        assert c.post(f"/v1/fine_tuning/jobs/{second}/pause").status_code == 200
        assert c.post(f"/v1/fine_tuning/jobs/{second}/cancel").status_code == 200  # replaces the pause
    assert stack.wait_terminal(first)["status"] == "cancelled"
    assert stack.wait_terminal(second)["status"] == "cancelled"


def test_upload_onto_a_full_disk_is_storage_full_and_stores_nothing(stack: FaultStack) -> None:
    if not stack.tmpfs:  # type: ignore[attr-defined]
        pytest.skip("mounting a small tmpfs needs root (CAP_SYS_ADMIN)")
    with stack.client() as c:
        before = c.get("/v1/files").json()["data"]
    filler = _fill(stack.artifacts)  # type: ignore[attr-defined]
    try:
        with stack.client() as c:
            response = c.post(
                "/v1/files", files={"file": ("t.jsonl", "".join(sst2_lines("train", 64)).encode())}
            )
            after = c.get("/v1/files").json()["data"]
    finally:
        filler.unlink()
    assert response.status_code == 507, response.text
    assert response.json()["error"]["code"] == "storage_full"
    assert after == before
