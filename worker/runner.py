"""Domain code behind the tasks: claim a job, fetch its files, train, publish results, record the outcome."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tarfile
import tempfile
import uuid
from pathlib import Path

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

import training
from core import jobs
from core.db import get_sessionmaker
from core.files import create_file
from core.models import File, Job
from core.settings import Settings, get_settings
from core.states import JobStatus
from core.storage import Storage
from training.spec import JobSpec, TrainingError, TrainResult
from worker import failures
from worker.hooks import Heartbeat, JobHooks

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    """Unique per claim: host, process and a random tag (a re-queued job gets a new owner id)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _tar(folder: Path, out: Path) -> Path:
    """A .tar.gz of the folder's files at the archive root."""
    with tarfile.open(out, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(folder)))
    return out


def _fetch_input(factory: sessionmaker[Session], storage: Storage, file_id: str, target: Path) -> Path:
    with factory() as s:
        row = s.get(File, file_id)
    if row is None:
        raise TrainingError(
            f"Input file {file_id} was deleted before the job ran; upload it again", "training_file"
        )
    storage.get_file(row.storage_key, target)
    return target


def run_job(job_id: str, settings: Settings | None = None) -> None:
    """Claim and run one job; every outcome is written to the job row (never raised to Celery)."""
    settings = settings or get_settings()
    factory = get_sessionmaker(settings.database_url)
    worker_id = new_worker_id()
    with factory() as s:
        job = jobs.claim(s, job_id, worker_id)
    if job is None:
        log.info("job %s is not queued (duplicate delivery, cancelled or done): nothing to do", job_id)
        return
    storage = Storage(settings.artifacts_url)
    scratch = settings.data_dir / "work"
    scratch.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{job_id}-", dir=scratch))
    recorder = JobHooks(job_id, worker_id, settings.database_url, storage)
    try:
        result = _train(job, settings, storage, work, recorder, worker_id)
        recorder.flush()
        _finish(job, result, settings, storage, work, recorder, worker_id)
    except jobs.LostOwnership:
        log.warning("job %s was taken from this worker (re-queued or stopped); dropping this run", job_id)
    except (OperationalError, InterfaceError) as exc:
        # The database went away mid-run: nothing can be recorded now, and a failure recorded once it is
        # back would blame the job. Its heartbeat goes stale and the reaper re-queues it from its checkpoint.
        log.warning("job %s: database unavailable (%s); leaving it to the reaper", job_id, type(exc).__name__)
    except Exception as exc:
        code, message, param = failures.describe(exc)
        if code == "internal_error":
            log.exception("job %s crashed", job_id)
        else:
            log.warning("job %s failed: %s: %s", job_id, code, message)
        _fail(factory, job_id, worker_id, code, message, param)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fail(
    factory: sessionmaker[Session], job_id: str, worker_id: str, code: str, message: str, param: str | None
) -> None:
    try:
        with factory() as s:
            jobs.fail(s, job_id, code, message, param, worker_id=worker_id)
    except jobs.LostOwnership:
        log.warning("job %s: not recording failure, the job is no longer ours", job_id)


def _train(
    job: Job, settings: Settings, storage: Storage, work: Path, recorder: JobHooks, worker_id: str
) -> TrainResult:
    factory = get_sessionmaker(settings.database_url)
    train = _fetch_input(factory, storage, job.training_file, work / "input" / "train.jsonl")
    valid = None
    if job.validation_file:
        valid = _fetch_input(factory, storage, job.validation_file, work / "input" / "valid.jsonl")
    resume = None
    if job.checkpoint_key:
        resume = work / "resume"
        storage.get_dir(job.checkpoint_key, resume)
    hyper = {k: v for k, v in job.hyperparameters.items()}
    hyper.setdefault("checkpoint_every", settings.checkpoint_every)
    method = str(job.method.get("type", "sparsegrad"))
    spec = JobSpec(model=job.model, method=method, task=job.task, hyperparameters=hyper, seed=job.seed)  # type: ignore[arg-type]
    interval = max(1.0, min(30.0, settings.heartbeat_timeout / 4))
    with Heartbeat(job.id, worker_id, settings.database_url, interval):
        return training.run_training(
            spec,
            train,
            valid,
            work / "run",
            hooks=recorder.hooks(),
            resume_from=resume,
            models_dir=settings.models_path,
            precision=settings.precision,
            memory_budget=settings.device_memory,
        )


def _finish(
    job: Job,
    result: TrainResult,
    settings: Settings,
    storage: Storage,
    work: Path,
    recorder: JobHooks,
    worker_id: str,
) -> None:
    factory = get_sessionmaker(settings.database_url)
    if result.checkpoint_dir is not None and result.step not in recorder.uploaded_steps:
        recorder.on_checkpoint(result.step, result.checkpoint_dir, dict(result.metrics))
    if result.status in ("cancelled", "paused"):
        target = JobStatus.CANCELLED if result.status == "cancelled" else JobStatus.PAUSED
        with factory() as s:
            jobs.finish_stopped(s, job.id, worker_id, target)
        return
    if result.delta_dir is None:
        raise TrainingError("Training completed without producing a delta", None)
    outputs = work / "outputs"
    outputs.mkdir()
    delta = _tar(result.delta_dir, outputs / "delta.tar.gz")
    metrics_file = outputs / "metrics.jsonl"
    metrics_file.write_text("".join(json.dumps(row) + "\n" for row in result.history))
    with factory() as s:
        delta_row = create_file(
            s,
            storage,
            tenant_id=job.tenant_id,
            local=delta,
            filename=f"{job.id}-delta.tar.gz",
            purpose="fine-tune-results",
        )
        metrics_row = create_file(
            s,
            storage,
            tenant_id=job.tenant_id,
            local=metrics_file,
            filename=f"{job.id}-metrics.jsonl",
            purpose="fine-tune-results",
        )
        jobs.succeed(
            s,
            job.id,
            worker_id,
            result_files=[delta_row.id, metrics_row.id],
            trained_tokens=result.trained_tokens,
            metrics={**(s.get_one(Job, job.id).metrics or {}), **result.metrics},
            fine_tuned_model=jobs.fine_tuned_name(job),
        )


def merge_job(job_id: str, settings: Settings | None = None) -> None:
    """Merge the job's delta into its base model; the merged folder becomes a result file (.tar.gz)."""
    settings = settings or get_settings()
    factory = get_sessionmaker(settings.database_url)
    storage = Storage(settings.artifacts_url)
    with factory() as s:
        job = s.get(Job, job_id)
        if job is None or job.status != "succeeded" or job.merge_status != "queued":
            log.info("merge of %s: nothing to do", job_id)
            return
        jobs.set_merge_status(s, job_id, "running")
        jobs.add_event(s, job_id, "Merging the delta into the base model")
        s.commit()
        delta_row = s.get(File, job.result_files[0])
    work = Path(tempfile.mkdtemp(prefix=f"{job_id}-merge-", dir=settings.data_dir))
    try:
        if delta_row is None:
            raise TrainingError("The job's delta file was deleted; the merge needs it", None)
        storage.get_file(delta_row.storage_key, work / "delta.tar.gz")
        with tarfile.open(work / "delta.tar.gz") as tar:
            tar.extractall(work / "delta", filter="data")
        training.merge_delta(job.model, work / "delta", work / "merged", models_dir=settings.models_path)
        archive = _tar(work / "merged", work / "merged.tar.gz")
        with factory() as s:
            row = create_file(
                s,
                storage,
                tenant_id=job.tenant_id,
                local=archive,
                filename=f"{job_id}-merged.tar.gz",
                purpose="fine-tune-results",
            )
            jobs.set_merge_status(s, job_id, "succeeded", merged_file=row.id)
            jobs.add_event(s, job_id, f"Merged model ready: {row.id}", data={"file_id": row.id})
            s.commit()
    except Exception as exc:
        log.exception("merge of %s failed", job_id)
        with factory() as s:
            jobs.set_merge_status(s, job_id, "failed")
            detail = exc.message if isinstance(exc, TrainingError) else f"{type(exc).__name__}: {exc}"
            jobs.add_event(s, job_id, f"Merge failed: {detail}", level="error")
            s.commit()
    finally:
        shutil.rmtree(work, ignore_errors=True)
