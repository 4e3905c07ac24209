"""The inference server's queue (worker.infer_queue) runs calls one at a time, grouping the calls for the
model that ran last ahead of older ones of other models, at most GROUP in a row; errors reach the caller."""

from __future__ import annotations

import threading

import pytest

from worker.infer_queue import GROUP, CallQueue


def test_calls_for_the_current_model_go_first_at_most_group_ahead_of_an_older_one() -> None:
    assert GROUP == 4
    queue = CallQueue()
    ran: list[str] = []
    release = threading.Event()

    def call(name: str, hold: bool = False) -> str:
        if hold:
            release.wait(60)
        ran.append(name)
        return name

    first = queue.submit("a", call, "a0", True)
    arrivals = ["b1", "a1", "b2", "a2", "a3", "a4", "a5", "a6", "b3"]
    futures = [queue.submit(name[0], call, name) for name in arrivals]
    release.set()
    assert [f.result(timeout=60) for f in [first, *futures]] == ["a0", *arrivals]
    # a1..a4 join a0's model ahead of b1 (four is the bound), then b1 and the other b's, then a5, a6
    assert ran == ["a0", "a1", "a2", "a3", "a4", "b1", "b2", "b3", "a5", "a6"]


def test_an_error_reaches_the_caller_and_the_queue_goes_on() -> None:
    queue = CallQueue()

    def fail() -> None:
        raise ValueError("bad call")

    with pytest.raises(ValueError, match="bad call"):
        queue.submit("a", fail).result(timeout=60)
    assert queue.submit(None, lambda: 7).result(timeout=60) == 7
