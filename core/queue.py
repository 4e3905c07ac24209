"""The producer side of the queue: a Celery app configured from settings that only sends "run job X".

The job row is committed BEFORE `send_run` is called; the job id is the task id, so a re-send is a
duplicate the worker's compare-and-set claim ignores.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery

import core.broker  # noqa: F401  (sqla+… broker URLs: the transport safe for several processes)
from core.settings import Settings, get_settings

RUN_JOB = "sgft.run_job"
MERGE_JOB = "sgft.merge_job"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Configuration shared by the producer (API, reaper) and the worker."""
    options: dict[str, Any] = {}
    if settings.broker_url.startswith(("sqla+", "sqlalchemy+")):
        # kombu's SQLAlchemy transport hands every transport option to create_engine(), so only engine
        # arguments go here. It has no visibility timeout: a delivered message is never redelivered, and
        # the reaper (database heartbeats) is what re-sends a dead worker's job.
        if "sqlite" in settings.broker_url:
            options["connect_args"] = {"timeout": 30}  # wait on SQLite's write lock instead of failing
    else:
        options["visibility_timeout"] = settings.visibility_timeout  # Redis/SQS: above the longest job
    return {
        "broker_url": settings.broker_url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": False,  # the reaper re-queues from the database, not the broker
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": options,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": settings.queue_name("cpu"),
        "task_create_missing_queues": True,
    }


@lru_cache(maxsize=4)
def _producer(broker_url: str, settings_json: str) -> Celery:
    settings = Settings.model_validate_json(settings_json)
    app = Celery("sgft-producer", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def producer(settings: Settings | None = None) -> Celery:
    """The producer app for `settings` (cached per configuration)."""
    settings = settings or get_settings()
    return _producer(settings.broker_url, settings.model_dump_json())


def send_run(job_id: str, queue: str, settings: Settings | None = None) -> None:
    """Send "run job X" to the job's queue ("cpu" or "gpu")."""
    settings = settings or get_settings()
    producer(settings).send_task(RUN_JOB, args=[job_id], task_id=job_id, queue=settings.queue_name(queue))


def send_merge(job_id: str, queue: str, settings: Settings | None = None) -> None:
    """Send "merge job X's delta into its base model"."""
    settings = settings or get_settings()
    producer(settings).send_task(
        MERGE_JOB, args=[job_id], task_id=f"{job_id}-merge", queue=settings.queue_name(queue)
    )


def ping_broker(settings: Settings | None = None, timeout: float = 3.0) -> None:
    """Raise if the broker cannot be reached within `timeout` seconds."""
    settings = settings or get_settings()
    with producer(settings).connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
