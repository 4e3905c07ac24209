"""The worker's Celery app: JSON only, late acks, prefetch 1, one task per child process."""

from __future__ import annotations

from celery import Celery

from core.queue import MERGE_JOB, RUN_JOB, celery_config
from core.settings import Settings, get_settings


def make_app(settings: Settings | None = None) -> Celery:
    """A worker app for `settings`; `worker_max_tasks_per_child=1` gives each job a fresh process."""
    settings = settings or get_settings()
    app = Celery("sgft", include=["worker.tasks"])
    app.conf.update(celery_config(settings))
    app.conf.update(
        worker_max_tasks_per_child=1,  # a fresh process per training job frees (GPU) memory
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_track_started=False,
        task_routes={
            RUN_JOB: {"queue": settings.queue_name(settings.job_queue)},
            MERGE_JOB: {"queue": settings.queue_name(settings.job_queue)},
        },
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


app = make_app()
