"""The job state machine: statuses, terminal states and the transitions allowed between them."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """Terminal states never change again."""
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.VALIDATING_FILES: frozenset({JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.PAUSED, JobStatus.CANCELLED, JobStatus.FAILED}),
    # running -> queued: the reaper re-queues a job whose worker died.
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PAUSED, JobStatus.QUEUED}
    ),
    JobStatus.PAUSED: frozenset({JobStatus.QUEUED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class IllegalTransition(Exception):
    """A requested status change the state machine forbids (e.g. anything out of a terminal state)."""

    def __init__(self, job_id: str, current: str, target: str) -> None:
        super().__init__(f"job {job_id} cannot go from {current!r} to {target!r}")
        self.job_id = job_id
        self.current = current
        self.target = target


def can_transition(current: JobStatus | str, target: JobStatus | str) -> bool:
    """Whether `current -> target` is allowed."""
    return JobStatus(target) in ALLOWED[JobStatus(current)]


def sources_of(target: JobStatus) -> list[str]:
    """Statuses from which `target` may be reached (used in compare-and-set UPDATEs)."""
    return [s.value for s, targets in ALLOWED.items() if target in targets]


def check_transition(job_id: str, current: JobStatus | str, target: JobStatus | str) -> None:
    """Raise IllegalTransition unless `current -> target` is allowed."""
    if not can_transition(current, target):
        raise IllegalTransition(job_id, str(current), str(target))
