"""The reaper loop: re-queue jobs whose worker died (stale heartbeat) and re-send lost queue messages."""

from __future__ import annotations

import logging
import threading

from core import jobs, merges
from core.db import get_sessionmaker
from core.queue import send_merge, send_run
from core.settings import Settings, get_settings

log = logging.getLogger(__name__)


def reap_once(settings: Settings) -> dict[str, list[str]]:
    """One pass; returns the ids re-queued and re-sent."""
    factory = get_sessionmaker(settings.database_url)
    with factory() as s:
        requeued = jobs.requeue_stale(s, settings.heartbeat_timeout, settings.max_attempts)
    resent: list[str] = []
    for job_id in requeued:
        _send(settings, job_id, None)
    with factory() as s:  # closed before sending: on SQLite an open transaction holds the write lock
        lost = [(job.id, job.queue) for job in jobs.lost_queued(s, settings.queued_grace)]
    for job_id, queue in lost:
        if job_id not in requeued and _send(settings, job_id, queue):
            resent.append(job_id)
            log.warning(
                "re-sent queued job %s (no worker claimed it in %.0f s)", job_id, settings.queued_grace
            )
    return {"requeued": requeued, "resent": resent, **_reap_merges(settings)}


def _reap_merges(settings: Settings) -> dict[str, list[str]]:
    """The same for merges: re-queue those whose worker died, re-send those nobody claimed."""
    factory = get_sessionmaker(settings.database_url)
    with factory() as s:
        requeued = merges.requeue_stale(s, settings.heartbeat_timeout, settings.max_attempts)
    with factory() as s:
        lost = merges.lost_queued(s, settings.queued_grace)
        queue_of = dict(lost)
        for job_id in requeued:  # queued just now: sent at once, without waiting out the grace period
            if job_id not in queue_of:
                queue_of[job_id] = s.get_one(jobs.Job, job_id).queue
    resent: list[str] = []
    for job_id, queue in queue_of.items():
        try:
            send_merge(job_id, queue, settings)
        except Exception as exc:
            log.warning("broker unavailable, merge of %s stays queued for the next pass: %s", job_id, exc)
            continue
        with factory() as s:
            merges.mark_sent(s, job_id)
        resent.append(job_id)
    return {"merges_requeued": requeued, "merges_resent": resent}


def _send(settings: Settings, job_id: str, queue: str | None) -> bool:
    factory = get_sessionmaker(settings.database_url)
    with factory() as s:
        job = s.get(jobs.Job, job_id)
        if job is None:
            return False
        try:
            send_run(job_id, queue or job.queue, settings)
        except Exception as exc:
            log.warning("broker unavailable, job %s stays queued for the next pass: %s", job_id, exc)
            return False
        jobs.mark_enqueued(s, job_id)
    return True


def run_forever(settings: Settings | None = None, stop: threading.Event | None = None) -> None:
    """Reap every `reaper_interval` seconds until `stop` is set (or forever)."""
    settings = settings or get_settings()
    stop = stop or threading.Event()
    log.info(
        "reaper: every %.0f s, heartbeat timeout %.0f s", settings.reaper_interval, settings.heartbeat_timeout
    )
    while not stop.is_set():
        try:
            reap_once(settings)
        except Exception:  # keep reaping through passing database errors
            log.exception("reaper pass failed")
        stop.wait(settings.reaper_interval)
