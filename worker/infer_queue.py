"""The inference server's call queue: one engine thread, calls for the same model grouped.

A fine-tune served on a shared base costs a swap (its ΔW written into the base's weights) whenever the
model served changes, so among the calls waiting, the ones for the model that ran last go first -- at most
GROUP of them ahead of an older call for another model, which then runs: no call waits behind more than
GROUP later ones, and each still has its own time limit from the moment it arrived.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

GROUP = 4


@dataclass
class Call:
    model: str | None
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: Future[Any] = field(default_factory=Future)


def pick(waiting: list[Call], last: str | None, ahead: int) -> int:
    """The index of the call to run next: the oldest, unless a later one is for the model that ran last
    and fewer than GROUP calls have gone ahead of the oldest."""
    if waiting[0].model != last and ahead < GROUP:
        for i, call in enumerate(waiting):
            if call.model == last:
                return i
    return 0


class CallQueue:
    """Runs submitted calls one at a time on its own thread, in `pick`'s order."""

    def __init__(self, name: str = "sgft-infer") -> None:
        self._waiting: list[Call] = []
        self._cond = threading.Condition()
        self._last: str | None = None
        self._ahead = 0  # calls run ahead of the oldest waiting one since it became the oldest
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def submit(self, model: str | None, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        call = Call(model, fn, args)
        with self._cond:
            self._waiting.append(call)
            self._cond.notify()
        return call.future

    def _next(self) -> Call:
        with self._cond:
            self._cond.wait_for(lambda: bool(self._waiting))
            i = pick(self._waiting, self._last, self._ahead)
            self._ahead = self._ahead + 1 if i else 0
            call = self._waiting.pop(i)
            self._last = call.model
            return call

    def _run(self) -> None:
        while True:
            call = self._next()
            if not call.future.set_running_or_notify_cancel():
                continue
            try:
                call.future.set_result(call.fn(*call.args))
            except BaseException as exc:  # noqa: BLE001 (handed to whoever waits on the future)
                call.future.set_exception(exc)
