"""core.jobs on SQLite and PostgreSQL: CAS claim, ownership, stop requests, reaping, events."""

from __future__ import annotations

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from core import jobs, queries
from core.models import Job, now
from rules.states import IllegalTransition
from tests.service.factories import make_job


def _age_heartbeat(session: Session, job_id: str, seconds: float) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=now() - seconds))
    session.commit()


def test_create_is_queued_with_ordered_events(session: Session) -> None:
    job = make_job(session)
    assert job.status == "queued" and job.id.startswith("ftjob-")
    events, more = queries.list_events(session, job.id, ascending=True)
    assert [e.seq for e in events] == [1, 2, 3] and not more
    assert events[-1].message == "Job queued"


def test_idempotent_create(session: Session) -> None:
    first = make_job(session)
    new = jobs.NewJob(
        tenant_id=first.tenant_id,
        model="m",
        task="classification",
        method={"type": "full"},
        hyperparameters={},
        seed=1,
        suffix=None,
        metadata=None,
        training_file=first.training_file,  # a file that exists (make_job gave it a row)
        validation_file=None,
    )
    a, created_a = jobs.create_job(session, new, "key-1", "hash-1")
    b, created_b = jobs.create_job(session, new, "key-1", "hash-1")
    assert created_a and not created_b and a.id == b.id
    with pytest.raises(jobs.IdempotencyConflict):
        jobs.create_job(session, new, "key-1", "hash-2")


def test_claim_is_compare_and_set(session: Session) -> None:
    job = make_job(session)
    claimed = jobs.claim(session, job.id, "w1")
    assert claimed is not None and claimed.status == "running" and claimed.attempts == 1
    assert jobs.claim(session, job.id, "w2") is None  # duplicate delivery: nothing happens
    session.refresh(claimed)
    assert claimed.worker_id == "w1" and claimed.attempts == 1


def test_only_owner_writes(session: Session) -> None:
    job = make_job(session)
    jobs.claim(session, job.id, "w1")
    jobs.record_progress(
        session,
        job.id,
        "w1",
        step=3,
        total_steps=10,
        epoch=0.3,
        seconds_remaining=7.0,
        trained_tokens=90,
        metrics={"train_loss": 0.5},
        event={"train_loss": 0.5},
    )
    with pytest.raises(jobs.LostOwnership):
        jobs.heartbeat(session, job.id, "intruder")
    row = queries.get_job(session, job.tenant_id, job.id)
    assert row is not None and row.step == 3 and row.metrics["train_loss"] == 0.5


def test_succeed_then_terminal(session: Session) -> None:
    job = make_job(session)
    jobs.claim(session, job.id, "w1")
    jobs.succeed(
        session,
        job.id,
        "w1",
        result_files=["file-x"],
        trained_tokens=10,
        metrics={"a": 1.0},
        fine_tuned_model=jobs.fine_tuned_name(job),
    )
    session.refresh(job)
    assert job.status == "succeeded" and job.result_files == ["file-x"]
    assert job.fine_tuned_model == f"ft:all-MiniLM-L6-v2:sparsegrad:{job.id[6:]}"
    with pytest.raises(IllegalTransition, match="'succeeded' to 'cancelled'"):
        jobs.cancel(session, job)
    with pytest.raises(IllegalTransition):
        jobs.fail(session, job.id, "x", "y")


def test_cancel_queued_now_running_cooperatively(session: Session) -> None:
    queued = make_job(session)
    assert jobs.cancel(session, queued).status == "cancelled"
    assert jobs.claim(session, queued.id, "w1") is None
    running = make_job(session)
    jobs.claim(session, running.id, "w1")
    after = jobs.cancel(session, running)
    assert after.status == "running" and after.stop_request == "cancel"
    assert jobs.stop_request(session, running.id) == "cancel"
    jobs.finish_stopped(session, running.id, "w1", jobs.JobStatus.CANCELLED)
    session.refresh(running)
    assert running.status == "cancelled" and running.finished_at is not None


def test_pause_resume(session: Session) -> None:
    job = make_job(session)
    jobs.claim(session, job.id, "w1")
    jobs.pause(session, job)
    jobs.finish_stopped(session, job.id, "w1", jobs.JobStatus.PAUSED)
    session.refresh(job)
    assert job.status == "paused"
    with pytest.raises(IllegalTransition):
        jobs.pause(session, job)
    assert jobs.resume(session, job).status == "queued"
    again = jobs.claim(session, job.id, "w2")
    assert again is not None and again.attempts == 2


def test_reaper_requeues_then_fails(session: Session) -> None:
    job = make_job(session)
    for attempt in (1, 2):
        assert jobs.claim(session, job.id, f"w{attempt}") is not None
        jobs.add_checkpoint(session, job.id, f"w{attempt}", 5 * attempt, f"checkpoints/{job.id}/x", {})
        assert jobs.requeue_stale(session, 60, max_attempts=2) == []  # fresh heartbeat: untouched
        _age_heartbeat(session, job.id, 120)
        requeued = jobs.requeue_stale(session, 60, max_attempts=2)
        session.refresh(job)
        if attempt == 1:
            assert requeued == [job.id] and job.status == "queued" and job.checkpoint_step == 5
            with pytest.raises(jobs.LostOwnership):
                jobs.heartbeat(session, job.id, "w1")  # the dead worker cannot come back
        else:
            assert requeued == [] and job.status == "failed" and job.error_code == "worker_lost"
            assert "2 times" in (job.error_message or "")


def test_reaper_cancels_stale_job_with_cancel_request(session: Session) -> None:
    job = make_job(session)
    jobs.claim(session, job.id, "w1")
    jobs.cancel(session, job)
    _age_heartbeat(session, job.id, 500)
    assert jobs.requeue_stale(session, 60, 3) == []
    session.refresh(job)
    assert job.status == "cancelled"


def test_lost_queued_messages(session: Session) -> None:
    job = make_job(session)
    assert [j.id for j in jobs.lost_queued(session, grace=1000)] == []
    assert [j.id for j in jobs.lost_queued(session, grace=-1)] == [job.id]  # never enqueued, past grace
    jobs.mark_enqueued(session, job.id)
    assert jobs.lost_queued(session, grace=1000) == []


def test_list_pagination_and_metadata(session: Session) -> None:
    made = [make_job(session, metadata={"team": "a" if i % 2 else "b"}) for i in range(5)]
    tenant = made[0].tenant_id
    page1, more1 = queries.list_jobs(session, tenant, limit=2)
    page2, more2 = queries.list_jobs(session, tenant, limit=2, after=page1[-1].id)
    page3, more3 = queries.list_jobs(session, tenant, limit=2, after=page2[-1].id)
    ids = [j.id for j in page1 + page2 + page3]
    assert more1 and more2 and not more3
    assert ids == [j.id for j in reversed(made)]
    team_a, _ = queries.list_jobs(session, tenant, metadata={"team": "a"})
    assert {j.id for j in team_a} == {made[1].id, made[3].id}
    other = make_job(session, tenant="other")
    assert other.id not in [j.id for j in queries.list_jobs(session, tenant, limit=50)[0]]
