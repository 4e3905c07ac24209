"""`docker compose up` for real (issue 18): the images built from the Dockerfile, the stack of
docker-compose.yml (test override: the worker's CPU torch build, an env file and API port of its own), and
the OpenAI client against the published port: a job end to end with its delta from the object store, its
predictions from the `infer` service (equal to the engine's evaluation), a killed worker, a restarted API,
`down` + `up` and `down -v`. The tests run in order on one project."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.compose.project import Project
from tests.inference.engine_eval import engine_view
from tests.service.evaluate import extract, minilm_path
from tests.service.helpers import sst2_lines
from tests.service.stack import free_port, wait_for

pytestmark = pytest.mark.compose

MODEL = "all-MiniLM-L6-v2"
QUICK = {"n_epochs": 1, "batch_size": 8, "max_seq_length": 32, "basis_steps": 1, "eval_at_start": False}
# Long enough to be interrupted, with frequent checkpoints (64 lines x 4 epochs / 8 = 32 steps).
LONG = {**QUICK, "n_epochs": 4, "checkpoint_every": 4}
TIMINGS: dict[str, float] = {}
STATE: dict[str, Any] = {}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """Images built (layers reused), the stack up and healthy on fresh volumes; `down -v` at the end."""
    p = Project(
        name=f"sgft-compose-test-{os.getpid()}", folder=tmp_path_factory.mktemp("compose"), port=free_port()
    )
    p.write_env()
    start = time.monotonic()
    p.compose("build", timeout=1800)
    TIMINGS["compose build"] = time.monotonic() - start
    try:
        TIMINGS["up -d --wait (fresh volumes)"] = p.up()
        STATE["up_started"] = start + TIMINGS["compose build"]
        yield p
    finally:
        p.compose("down", "-v", "--remove-orphans", check=False)
        print("\ntimings: " + ", ".join(f"{k} {v:.0f} s" for k, v in TIMINGS.items()))


@pytest.fixture(scope="module")
def client(project: Project) -> Any:
    from openai import OpenAI

    out = project.exec("api", "sgft", "keys", "create", "--tenant", "compose")
    found = re.search(r"sgft-[0-9a-f]+-[A-Za-z0-9_-]+", out)
    assert found, f"no key in `sgft keys create` output: {out!r}"
    return OpenAI(base_url=f"{project.url}/v1", api_key=found.group(0), max_retries=3)


def _upload(client: Any, folder: Path, lines: int) -> str:
    path = folder / "train.jsonl"
    path.write_text("".join(sst2_lines("train", lines)))
    with path.open("rb") as f:
        return str(client.files.create(file=f, purpose="fine-tune").id)


def _create(client: Any, training_file: str, hyper: dict[str, Any]) -> str:
    job = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=training_file,
        method={"type": "sparsegrad", "sparsegrad": {"hyperparameters": hyper}},
        seed=0,
    )
    assert job.status == "queued", job
    return str(job.id)


def _finished(client: Any, job_id: str, timeout: float = 420) -> Any:
    from openai import APIConnectionError

    def done() -> Any:
        try:
            job = client.fine_tuning.jobs.retrieve(job_id)
        except APIConnectionError:  # the API is restarting
            return None
        return job if job.status in ("succeeded", "failed", "cancelled") else None

    return wait_for(done, timeout, f"job {job_id} to finish", interval=1)


def _events(client: Any, job_id: str) -> list[str]:
    return [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=100).data[::-1]]


def _health(project: Project, service: str) -> str:
    done = subprocess.run(
        ["docker", "inspect", "--format", "{{.State.Health.Status}}", project.container_id(service)],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_every_service_is_healthy_and_data_is_owned_by_uid_10001(project: Project) -> None:
    for service in ("postgres", "redis", "minio", "api", "worker-cpu", "reaper", "infer"):
        assert _health(project, service) == "healthy", f"{service}: {_health(project, service)}"
    for one_shot in ("migrate", "minio-init"):
        states = [c["State"] for c in project.containers() if c["Names"].endswith(f"-{one_shot}-1")]
        assert states == ["exited"], f"{one_shot}: {states}"
    owner = project.exec("worker-cpu", "sh", "-c", "touch /data/.probe && stat -c %u:%g /data /data/models")
    assert owner.split() == ["10001:10001", "10001:10001"], owner


def test_openai_flow_and_the_delta_from_the_object_store(
    project: Project, client: Any, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    import sparsegrad

    job_id = _create(client, _upload(client, tmp_path, 64), QUICK)
    job = _finished(client, job_id)
    assert job.status == "succeeded", (job.error, project.logs())
    TIMINGS["up -d to a succeeded job (fresh volumes)"] = time.monotonic() - STATE["up_started"]
    events = _events(client, job_id)
    assert events[-1] == "The job has successfully completed" and any("delta written" in m for m in events)
    delta_file = job.result_files[0]
    # The result lives in the object store (the bucket of SGFT_ARTIFACTS_URL), not on a container's disk.
    keys = project.exec("api", "python", "-c", "import fsspec; print(*fsspec.filesystem('s3').find('sgft'))")
    assert f"sgft/artifacts/files/{delta_file}" in keys.split(), keys
    archive = client.files.content(delta_file).content
    delta = extract(archive, tmp_path / "delta")
    base = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    tuned = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    sparsegrad.load_delta(tuned, delta)
    changed = [
        name
        for (name, a), (_, b) in zip(base.named_parameters(), tuned.named_parameters(), strict=True)
        if not torch.equal(a, b)
    ]
    assert any("encoder.layer" in name for name in changed), f"the delta changed only {changed}"
    STATE["quick"] = (job_id, delta_file, archive)


def test_the_infer_service_predicts_as_the_engine_evaluates(
    client: Any, project: Project, tmp_path: Path
) -> None:
    """The API proxies /v1/predictions to the `infer` container, which fetches the delta from the object
    store: same labels as the engine's own evaluation of base + delta, probabilities within 1e-5."""
    import httpx

    job_id, _, archive = STATE["quick"]
    job = client.fine_tuning.jobs.retrieve(job_id)
    valid_lines = sst2_lines("dev", 8)
    texts = [json.loads(line)["text"] for line in valid_lines]
    reply = httpx.post(
        f"{client.base_url}predictions",
        json={"model": job.fine_tuned_model, "input": texts},
        headers={"Authorization": f"Bearer {client.api_key}"},
        timeout=180,
    )
    assert reply.status_code == 200, reply.text + "\n" + project.compose("logs", "--no-color", "infer").stdout
    data = reply.json()["data"]
    valid = tmp_path / "valid.jsonl"
    valid.write_text("".join(valid_lines))
    probs, _ = engine_view(tmp_path / "models", MODEL, extract(archive, tmp_path / "delta"), valid)
    assert [d["label"] for d in data] == [str(int(p.argmax())) for p in probs]
    for d, p in zip(data, probs, strict=True):
        assert max(abs(d["scores"][str(i)] - float(p[i])) for i in range(len(p))) < 1e-5, (d, p)


def test_killed_worker_resumes_from_its_checkpoint(project: Project, client: Any, tmp_path: Path) -> None:
    job_id = _create(client, _upload(client, tmp_path, 64), LONG)

    def checkpointed() -> int:
        data = client.fine_tuning.jobs.checkpoints.list(job_id).data
        return int(data[0].step_number) if data else 0

    step = wait_for(checkpointed, 300, "a checkpoint", interval=0.5)
    worker = project.container_id("worker-cpu")
    subprocess.run(["docker", "kill", worker], check=True, capture_output=True)
    assert client.fine_tuning.jobs.retrieve(job_id).status == "running"
    subprocess.run(["docker", "start", worker], check=True, capture_output=True)
    job = _finished(client, job_id)
    assert job.status == "succeeded", (job.error, project.logs())
    assert job.attempts == 2, job
    events = _events(client, job_id)
    assert any(m.startswith("Re-queued") for m in events), events
    resumed = [m for m in events if m.startswith("Attempt 2")]
    assert resumed and "from checkpoint at step" in resumed[0], events
    assert int(resumed[0].rsplit(" ", 1)[-1]) >= step


def test_api_restart_while_a_job_runs_loses_nothing(project: Project, client: Any, tmp_path: Path) -> None:
    files_before = {f.id for f in client.files.list().data}
    jobs_before = {j.id: j.status for j in client.fine_tuning.jobs.list(limit=100).data}
    job_id = _create(client, _upload(client, tmp_path, 64), LONG)

    def running() -> bool:
        job = client.fine_tuning.jobs.retrieve(job_id)
        return bool(job.status == "running" and (getattr(job, "progress", None) or {}).get("step", 0) > 0)

    wait_for(running, 300, "the job to be running")
    project.compose("restart", "api")
    job = _finished(client, job_id)  # the client retries while the API comes back
    assert job.status == "succeeded" and job.attempts == 1, (job, project.logs())
    assert files_before <= {f.id for f in client.files.list().data}
    after = {j.id: j.status for j in client.fine_tuning.jobs.list(limit=100).data}
    assert {k: after[k] for k in jobs_before} == jobs_before


def test_down_then_up_keeps_jobs_files_and_results(project: Project, client: Any) -> None:
    jobs = {j.id: (j.status, j.result_files) for j in client.fine_tuning.jobs.list(limit=100).data}
    files = {f.id for f in client.files.list().data}
    project.compose("down")
    assert project.containers() == [], "`down` leaves containers"
    assert project.volumes(), "`down` without -v keeps the volumes"
    TIMINGS["up -d --wait (existing volumes)"] = project.up()
    assert {j.id: (j.status, j.result_files) for j in client.fine_tuning.jobs.list(limit=100).data} == jobs
    assert {f.id for f in client.files.list().data} == files
    job_id, delta_file, archive = STATE["quick"]
    assert client.files.content(delta_file).content == archive, f"the result of {job_id} changed"


def test_down_v_leaves_nothing(project: Project) -> None:
    project.compose("down", "-v", "--remove-orphans")
    assert project.containers() == []
    assert project.volumes() == []
    networks = subprocess.run(
        ["docker", "network", "ls", "-q", "--filter", f"label=com.docker.compose.project={project.name}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert networks.stdout.split() == []
