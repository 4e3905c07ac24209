"""The job state machine."""

from __future__ import annotations

import pytest

from core.states import ALLOWED, TERMINAL, IllegalTransition, JobStatus, can_transition, check_transition


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
