"""The state machines: a job's status and its merge side task, with the transitions allowed in each."""

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


# Transitions the table allows but only one actor may take: running -> queued belongs to the reaper (its
# worker died); a user's resume moves a job out of `paused` and nothing else.
RESUME_FROM = frozenset({JobStatus.PAUSED})


class MergeStatus(StrEnum):
    """The merged-model side task of a succeeded job (None: never asked for)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


# failed -> queued: a retry; running -> queued: the reaper's (the merging worker died); running -> failed:
# the merge failed, or the reaper gave up after max_attempts.
MERGE_ALLOWED: dict[MergeStatus | None, frozenset[MergeStatus]] = {
    None: frozenset({MergeStatus.QUEUED}),
    MergeStatus.QUEUED: frozenset({MergeStatus.RUNNING}),
    MergeStatus.RUNNING: frozenset({MergeStatus.SUCCEEDED, MergeStatus.FAILED, MergeStatus.QUEUED}),
    MergeStatus.FAILED: frozenset({MergeStatus.QUEUED}),
    MergeStatus.SUCCEEDED: frozenset(),
}


# A user's request queues a merge never asked for, or one that failed; running -> queued is the reaper's.
MERGE_REQUEST_FROM = frozenset({None, MergeStatus.FAILED})


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
