"""Fine-tunes served on a shared base by adding the active one's ΔW into the base's weights ("apply").

The hook strategy (training.serving.adapters.SharedBase) adds x ΔWᵀ beside every target layer on every
token; here the fine-tune in use has its ΔW, computed from the factors its Adapter holds, added into the
target weights in place (and its dense parameters copied in), so a request decodes at the base's own speed
and the cost moves to a swap when the served model changes.

- Exact restore: the first time a layer or parameter is targeted, its base value is copied once per base
  (in bf16 or fp16 when that copy converts back to the same values, else in the weight's own dtype); a swap
  writes pristine + ΔW (float32 weights: one addmm from the held factors, equal to the merged weights
  within float rounding), and back to the base writes the pristine copy: the base's weights come back
  bit for bit.
- One model at a time: `use(adapter)` waits until no request of another model runs, swaps if needed, and
  lets any number of requests of the applied model run together. Waiters are served in arrival order (a
  request never overtakes an earlier one of another model), so nothing starves and nothing deadlocks,
  as long as a thread does not nest `use` of two different models.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from sparsegrad.delta import check_base
from sparsegrad.targets import linear_weight
from training.serving.adapters import Adapter, LayerDelta, SharedBase


def exact_copy(w: torch.Tensor) -> torch.Tensor:
    """A copy of `w` in the narrowest float dtype that converts back to exactly `w`."""
    w = w.detach()
    for dtype in (torch.bfloat16, torch.float16):
        if dtype.itemsize < w.element_size():
            narrow = w.to(dtype)
            if torch.equal(narrow.to(w.dtype), w):
                return narrow
    return w.clone(memory_format=torch.contiguous_format)


class _Ticket:
    def __init__(self, adapter: Adapter | None) -> None:
        self.adapter = adapter


class AppliedBase(SharedBase):
    """A base model whose target weights hold the active fine-tune's ΔW while its requests run."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._live: dict[str, torch.Tensor] = {}  # layer or parameter name -> the tensor written in place
        self._pristine: dict[str, torch.Tensor] = {}  # the same names -> the base's value, exact
        self._applied: Adapter | None = None
        self._users = 0
        self._queue: deque[_Ticket] = deque()
        self._cond = threading.Condition()
        self.swaps = 0
        self.swap_seconds = 0.0

    @property
    def extra_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._pristine.values())

    @property
    def applied(self) -> Adapter | None:
        return self._applied

    def attach(self, adapter: Adapter) -> None:
        """Check `adapter` against the base and keep the pristine copies of what it changes (once per
        layer or parameter, for all fine-tunes of this base)."""
        with self.use(None):  # the weights are the base's own while no request of a fine-tune runs
            check_base(self.model, adapter.meta, check_fingerprint=True)
            for layer in adapter.layers:
                if layer not in self._live:
                    w = linear_weight(self.model.get_submodule(layer))  # (D_out, D_in); Conv1D: a view
                    self._live[layer], self._pristine[layer] = w, exact_copy(w)
            params = dict(self.model.named_parameters())
            for plain in adapter.params:
                if plain not in self._live:
                    self._live[plain], self._pristine[plain] = params[plain], exact_copy(params[plain])

    @contextmanager
    def use(self, adapter: Adapter | None) -> Iterator[None]:
        """Run the base as `adapter`'s fine-tune (None: the base itself) within this context."""
        ticket = _Ticket(adapter)
        with self._cond:
            self._queue.append(ticket)
            try:
                self._cond.wait_for(lambda: self._may_enter(ticket))
            finally:
                self._queue.remove(ticket)
            try:
                if self._applied is not adapter:
                    self._swap(adapter)
            except BaseException:
                self._cond.notify_all()
                raise
            self._users += 1
            self._cond.notify_all()  # others waiting for the same model may run with this one
        try:
            yield
        finally:
            with self._cond:
                self._users -= 1
                self._cond.notify_all()

    def _may_enter(self, ticket: _Ticket) -> bool:
        for earlier in self._queue:
            if earlier is ticket:
                break
            if earlier.adapter is not ticket.adapter:
                return False  # an earlier request of another model goes first
        return self._applied is ticket.adapter or self._users == 0

    @torch.no_grad()
    def _swap(self, adapter: Adapter | None) -> None:
        """Write the base's values back where the applied fine-tune changed them, then `adapter`'s
        (pristine + ΔW, rounded once). Called with the lock held and no request running."""
        started = time.perf_counter()
        old, self._applied = self._applied, None
        try:
            if old is not None:
                for name in [*old.layers, *old.params]:
                    if adapter is None or (name not in adapter.layers and name not in adapter.params):
                        self._live[name].copy_(self._pristine[name])
            if adapter is not None:
                for name, delta in adapter.layers.items():
                    _write_sum(self._live[name], self._pristine[name], delta)
                for name, value in adapter.params.items():
                    self._live[name].copy_(value)
                self._applied = adapter
        except BaseException:
            for name, w in self._live.items():  # never leave a half-applied model behind
                w.copy_(self._pristine[name])
            raise
        self.swaps += 1
        self.swap_seconds += time.perf_counter() - started


def _write_sum(w: torch.Tensor, pristine: torch.Tensor, delta: LayerDelta) -> None:
    """w = pristine + ΔW in float32 (at least), rounded to w's dtype; in one pass (addmm) where w and its
    pristine copy are contiguous float32."""
    if delta.dense is None and w.dtype == pristine.dtype == torch.float32 and w.is_contiguous():
        a, b = delta.factors()
        torch.addmm(pristine, a, b, out=w)
        return
    dw = delta.weight()
    w.copy_((pristine.to(torch.promote_types(w.dtype, dw.dtype)) + dw).to(w.dtype))
