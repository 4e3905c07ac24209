"""The job state machine."""

from __future__ import annotations

import pytest

from rules.states import (
    ALLOWED,
    MERGE_ALLOWED,
    MERGE_REQUEST_FROM,
    RESUME_FROM,
    TERMINAL,
    IllegalTransition,
    JobStatus,
    MergeStatus,
    can_transition,
    check_transition,
)


def test_terminal_states_are_final() -> None:
    for status in TERMINAL:
        assert status.terminal
        assert ALLOWED[status] == frozenset()
        for target in JobStatus:
            with pytest.raises(IllegalTransition):
                check_transition("ftjob-x", status, target)


def test_lifecycle_paths() -> None:
    path = ["validating_files", "queued", "running", "paused", "queued", "running", "succeeded"]
    for a, b in zip(path, path[1:], strict=False):
        check_transition("ftjob-x", a, b)
    assert can_transition("running", "queued")  # the reaper re-queues a dead worker's job
    assert not can_transition("queued", "succeeded")
    assert not can_transition("paused", "running")


def test_illegal_transition_names_states() -> None:
    with pytest.raises(IllegalTransition, match="'succeeded' to 'running'"):
        check_transition("ftjob-abc", JobStatus.SUCCEEDED, JobStatus.RUNNING)


def test_every_status_has_rules() -> None:
    assert set(ALLOWED) == set(JobStatus)
    assert {s for s in JobStatus if s.terminal} == {"succeeded", "failed", "cancelled"}


def test_user_transitions_are_narrower_than_the_table() -> None:
    """running -> queued is the reaper's alone, for jobs and for merges: a user's resume or merge request
    never takes it."""
    assert RESUME_FROM == {JobStatus.PAUSED} and all(can_transition(s, "queued") for s in RESUME_FROM)
    assert JobStatus.RUNNING not in RESUME_FROM and can_transition("running", "queued")
    assert all(MergeStatus.QUEUED in MERGE_ALLOWED[s] for s in MERGE_REQUEST_FROM)
    assert (
        MergeStatus.RUNNING not in MERGE_REQUEST_FROM
        and MergeStatus.QUEUED in MERGE_ALLOWED[MergeStatus.RUNNING]
    )
    assert MERGE_ALLOWED[MergeStatus.SUCCEEDED] == frozenset()
