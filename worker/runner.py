"""Domain code behind the tasks: claim a job, fetch its files, train, publish results, record the outcome."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import uuid
from pathlib import Path

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

import training
from core import jobs, merges
from core.db import get_sessionmaker
from core.files import discard, stage_file
from core.models import File, Job
from core.settings import Settings, get_settings
from core.storage import Storage
from rules.states import JobStatus
from training.spec import JobSpec, TrainingError, TrainResult
from worker import archives, failures
from worker.group import RankGroup, outcome, write_run_file
from worker.hooks import Heartbeat, JobHooks
from worker.redact import redact
from worker.scratch import scratch_dir

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
    work = Path(tempfile.mkdtemp(prefix=f"{job_id}-", dir=scratch_dir(settings)))
    method = str(job.method.get("type", "sparsegrad"))
    recorder = JobHooks(
        job_id, worker_id, settings.database_url, storage, method=method, requested=job.hyperparameters
    )
    try:
        result = _train(job, settings, storage, work, recorder, worker_id)
        recorder.flush()
        _finish(job, result, settings, storage, work, recorder, worker_id)
    except jobs.LostOwnership:
        log.warning("job %s was taken from this worker (re-queued or stopped); dropping this run", job_id)
    except (OperationalError, InterfaceError) as exc:
        if failures.database_full(exc):  # not an outage: recorded as storage_full if the write goes through
            log.error("job %s: the database's disk is full", job_id)
            _fail(factory, job_id, worker_id, *failures.describe(exc, storage.root))
        else:
            # The database went away mid-run: nothing can be recorded now, and a failure recorded once it is
            # back would blame the job. Its heartbeat goes stale; the reaper re-queues it from its checkpoint.
            log.warning(
                "job %s: database unavailable (%s); leaving it to the reaper", job_id, type(exc).__name__
            )
    except Exception as exc:
        code, message, param = failures.describe(exc, storage.root)
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
    except (OperationalError, InterfaceError) as exc:  # e.g. still full: the reaper settles it later
        log.error("job %s: could not record its failure (%s: %s)", job_id, code, exc)


def _beat_interval(settings: Settings) -> float:
    return max(1.0, min(30.0, settings.heartbeat_timeout / 4))


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
    with Heartbeat(job.id, worker_id, settings.database_url, _beat_interval(settings)) as beat:
        if (job.devices or 1) > 1:
            folder = work / "ranks"
            folder.mkdir()
            about = {
                "id": job.id,
                "worker_id": worker_id,
                "method": method,
                "requested": list(job.hyperparameters),
            }
            run_file = write_run_file(
                folder,
                spec,
                train,
                valid,
                resume,
                about,
                settings.models_path,
                settings.precision,
                settings.device_memory,
                settings.sharding,
            )
            return _train_on_ranks(run_file, job.devices, settings, beat.lost, recorder)
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


class DevicesUnavailable(TrainingError):
    code = "devices_unavailable"


def _train_on_ranks(
    run_file: Path, devices: int, settings: Settings, lost: threading.Event, recorder: JobHooks
) -> TrainResult:
    """Train on `devices` processes (worker.group: torchrun; rank 0 writes progress, events and
    checkpoints) while this process keeps the heartbeat; the group never outlives this call."""
    if devices > settings.worker_devices:
        raise DevicesUnavailable(
            f"the job asks for {devices} devices and this worker has {settings.worker_devices} "
            "(SGFT_WORKER_DEVICES); it reached a worker that cannot serve it"
        )
    group = RankGroup(run_file, devices, run_file.parent / "ranks.log")
    with group:
        status = group.wait(lost)
    result = outcome(run_file.parent / "result.json", status, group.tail())
    if result.checkpoint_dir is not None:  # every checkpoint rank 0 made, it uploaded
        recorder.uploaded_steps.add(result.step)
    return result


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
    staged: list[File] = []
    try:  # the bytes first, then the rows and the status in one transaction: all of it, or none
        for local, name in ((delta, f"{job.id}-delta.tar.gz"), (metrics_file, f"{job.id}-metrics.jsonl")):
            staged.append(_stage_result(storage, job, local, name))
        with factory() as s:
            s.add_all(staged)
            jobs.succeed(
                s,
                job.id,
                worker_id,
                result_files=[row.id for row in staged],
                trained_tokens=result.trained_tokens,
                metrics={**(s.get_one(Job, job.id).metrics or {}), **result.metrics},
                fine_tuned_model=jobs.fine_tuned_name(job),
            )
    except BaseException:
        discard(storage, staged)
        raise


def _stage_result(storage: Storage, job: Job, local: Path, filename: str) -> File:
    return stage_file(
        storage, tenant_id=job.tenant_id, local=local, filename=filename, purpose="fine-tune-results"
    )


def merge_job(job_id: str, settings: Settings | None = None) -> None:
    """Merge the job's delta into its base model; the merged folder becomes a result file (.tar.gz).

    The merge is claimed and kept alive by a heartbeat like a job: if this process dies, the reaper queues
    it again (or fails it past max_attempts), and its scratch folder is swept at the next worker start."""
    settings = settings or get_settings()
    factory = get_sessionmaker(settings.database_url)
    storage = Storage(settings.artifacts_url)
    worker_id = new_worker_id()
    with factory() as s:
        job = merges.claim(s, job_id, worker_id)
        if job is None:
            log.info("merge of %s: not queued (a duplicate message, or done): nothing to do", job_id)
            return
        delta_row = s.get(File, job.result_files[0])
    work = Path(tempfile.mkdtemp(prefix=f"{job_id}-merge-", dir=scratch_dir(settings)))
    try:
        with Heartbeat(job_id, worker_id, settings.database_url, _beat_interval(settings), merges.heartbeat):
            if delta_row is None:
                raise TrainingError("The job's delta file was deleted; the merge needs it", None)
            storage.get_file(delta_row.storage_key, work / "delta.tar.gz")
            archives.extract(work / "delta.tar.gz", work / "delta")
            training.merge_delta(job.model, work / "delta", work / "merged", models_dir=settings.models_path)
            archive = _tar(work / "merged", work / "merged.tar.gz")
            row = _stage_result(storage, job, archive, f"{job_id}-merged.tar.gz")
            try:
                with factory() as s:
                    s.add(row)
                    merges.succeed(s, job_id, worker_id, row.id)
            except BaseException:
                discard(storage, [row])
                raise
    except jobs.LostOwnership:
        log.warning("merge of %s was taken from this worker; dropping this attempt", job_id)
    except (OperationalError, InterfaceError) as exc:
        log.warning("merge of %s: database unavailable (%s); leaving it to the reaper", job_id, exc)
    except Exception as exc:
        log.exception("merge of %s failed", job_id)
        detail = exc.message if isinstance(exc, TrainingError) else f"{type(exc).__name__}: {exc}"
        detail = redact(detail, storage.root)
        try:
            with factory() as s:
                merges.fail(s, job_id, worker_id, detail)
        except jobs.LostOwnership:
            log.warning("merge of %s: not recording the failure, the merge is no longer ours", job_id)
    finally:
        shutil.rmtree(work, ignore_errors=True)
