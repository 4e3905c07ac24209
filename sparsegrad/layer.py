"""`SparseGradLinear`: a target layer wrapped as `base_layer`, trained through its HOSVD coefficients."""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsegrad.function import (
    SparseGradFunction,
    Support,
    apply_sparse_update,
    apply_support_update,
)
from sparsegrad.sidepath import DeltaPath
from sparsegrad.targets import is_conv1d, linear_weight, module_bias, module_weight

_COMPACT_EVERY = 16  # steps of logged ΔC updates between compactions
# Converted bases by (id of the source, device, dtype): layers that shared one P / Q before `.to()` share the
# converted copy too (the optimizer groups layers by their bases). Weak references: nothing is kept alive.
_MOVED: dict[tuple[int, torch.device, torch.dtype], tuple[weakref.ref[Any], weakref.ref[Any]]] = {}


def is_low_precision(dtype: torch.dtype) -> bool:
    """Weights stored in fewer than 32 bits (bf16, fp16): too coarse to take small updates in place."""
    return dtype.is_floating_point and torch.finfo(dtype).bits < 32


def _shared_to(t: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    for key in [k for k, (old, _) in _MOVED.items() if old() is None]:
        del _MOVED[key]
    key = (id(t), device, dtype)
    hit = _MOVED.get(key)
    if hit is not None and hit[0]() is t and (new := hit[1]()) is not None:
        return new  # type: ignore[no-any-return]
    new = t.to(device, dtype)
    if new is not t:
        _MOVED[key] = (weakref.ref(t), weakref.ref(new))
    return new


class SparseGradLinear(nn.Module):
    """Wraps an nn.Linear / Conv1D. Forward is the original layer's (plain W, no rotation).

    - `coef`: a zero-stride placeholder Parameter; its `.grad` is dL/dC = Pᵀ (dL/dW) Q, dense (D_out, D_in),
      or, when there is a `grad_support()`, flat: its values at that support's entries (`shape_placeholder`),
      accumulated by autograd (so gradient accumulation behaves as usual). The optimizer picks
      the top-k entries and folds the update into `base_layer.weight` (W = P C Qᵀ).
    - `delta()`: ΔC = C − C_init as sorted flat int64 indices + values (the adapter); updates are logged
      cheaply each step and folded into the `delta_index` / `delta_value` buffers every few steps.
    - `support_index`: the fixed support (k sorted flat indices) when support="fixed", else None. With
      `grad_on_support_only` (a fixed support that is never re-chosen) dL/dC is computed there only.
    - `block`: with config support_block, the rows × columns every support stays in; dL/dC is computed on
      it only (on the fixed support itself when that is never re-chosen).
    - `side`: for a base weight stored in low precision (bf16, fp16), the weight never changes while training;
      ΔW = P ΔC Qᵀ runs beside it as a `DeltaPath` (float32), so no update rounds away. `merge` folds it in.
      `.to()` keeps the model's function: a float32 weight moved to bf16 hands its ΔW to the side path, and
      back; bases, ΔC and coefficients stay float32 (float64 if asked), the placeholder stays zero-stride.
    `P`/`Q` are None for MeProp (identity basis). The base weight never has requires_grad.
    """

    P: torch.Tensor | None
    Q: torch.Tensor | None
    delta_index: torch.Tensor
    delta_value: torch.Tensor
    support_index: torch.Tensor | None

    def __init__(
        self,
        base_layer: nn.Module,
        p: torch.Tensor | None,
        q: torch.Tensor | None,
        k: int,
        group: str,
        support_index: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.transposed = is_conv1d(base_layer)
        d_out, d_in = linear_weight(base_layer).shape
        self.d_out, self.d_in, self.k, self.group = int(d_out), int(d_in), int(k), group
        if p is not None and p.shape != (d_out, d_out):
            raise ValueError(f"basis P has shape {tuple(p.shape)}, layer needs ({d_out}, {d_out})")
        if q is not None and q.shape != (d_in, d_in):
            raise ValueError(f"basis Q has shape {tuple(q.shape)}, layer needs ({d_in}, {d_in})")
        module_weight(base_layer).requires_grad_(False)
        self.register_buffer("P", p)
        self.register_buffer("Q", q)
        dtype = p.dtype if p is not None else torch.float32
        device = module_weight(base_layer).device
        # Zero-stride placeholder: costs one element, carries a (D_out, D_in) gradient.
        self.coef = nn.Parameter(torch.zeros(1, dtype=dtype, device=device).expand(d_out, d_in))
        self.register_buffer("delta_index", torch.zeros(0, dtype=torch.int64, device=device))
        self.register_buffer("delta_value", torch.zeros(0, dtype=dtype, device=device))
        self.register_buffer("support_index", support_index)
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.grad_on_support_only = False
        self._support: Support | None = None
        self.block: Support | None = None
        weight = module_weight(base_layer)
        self.side = DeltaPath(d_out, d_in, device, dtype) if is_low_precision(weight.dtype) else None

    @property
    def weight(self) -> torch.Tensor:
        """The live weight in nn.Linear layout (D_out, D_in) (a view for Conv1D)."""
        return linear_weight(self.base_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = linear_weight(self.base_layer)
        bias = module_bias(self.base_layer)
        if torch.is_grad_enabled() and self.coef.requires_grad:
            return SparseGradFunction.apply(
                x, self.coef, w, bias, self.P, self.Q, True, self.grad_support(), self.side
            )
        y = F.linear(x, w, bias)
        if self.side is not None:
            y = y + self.side.output(x.to(y.dtype), self.P, self.Q)
        return y

    def shape_placeholder(self) -> None:
        """Give `coef` the shape of the gradient it will carry: (D_out, D_in), or flat over `grad_support()`
        (4 bytes per entry there, where a sparse COO would cost 20). Call before building the optimizer."""
        support = self.grad_support()
        shape = (self.d_out, self.d_in) if support is None else (len(support),)
        if tuple(self.coef.shape) != shape:
            zero = torch.zeros(1, dtype=self.coef.dtype, device=self.coef.device)
            self.coef = nn.Parameter(zero.expand(*shape), requires_grad=self.coef.requires_grad)

    def dense_coef_grad(self) -> torch.Tensor | None:
        """dL/dC as a dense (D_out, D_in) matrix (zeros off the support), whatever the form of `coef.grad`."""
        grad = self.coef.grad
        if grad is None or grad.dim() == 2:
            return None if grad is None else grad.to_dense()
        support = self.grad_support()
        assert support is not None
        out = grad.new_zeros(self.d_out * self.d_in)
        return out.index_copy_(0, support.flat, grad).view(self.d_out, self.d_in)

    def grad_support(self) -> Support | None:
        """Where dL/dC is computed (None: everywhere): a fixed support never re-chosen, else the block."""
        return self.fixed_support() if self.grad_on_support_only else self.block

    def fixed_support(self) -> Support | None:
        """`support_index` as a Support (cached while it stays the same tensor); None when not fixed."""
        if self.support_index is None:
            return None
        if self._support is None or self._support.flat is not self.support_index:
            self._support = Support.of(self.support_index, self.d_in)
        return self._support

    @torch.no_grad()
    def apply_update(self, index: torch.Tensor, values: torch.Tensor, support: Support | None = None) -> None:
        """C[index] += values (flat sorted unique int64 index): records ΔC and does W += P S Qᵀ (or adds S to
        the side path of a low-precision weight). `support`, the Support of `index` when the caller has it,
        syncs W through its basis columns only."""
        self.record_update(index, values)
        if self.side is not None:
            self.side.add(index, values, support)
        elif support is not None:
            apply_support_update(self.weight, support, values, self.P, self.Q)
        else:
            apply_sparse_update(self.weight, index // self.d_in, index % self.d_in, values, self.P, self.Q)

    @torch.no_grad()
    def fold_side_path(self) -> None:
        """W = round(W + ΔW) once, for a low-precision weight (`merge`): the side path is then empty."""
        if self.side is None:
            return
        w = self.weight
        w.copy_((w.float() + self.get_delta_weight().float()).to(w.dtype))
        self.side = DeltaPath(self.d_out, self.d_in, w.device, self.delta_value.dtype, self.grad_support())

    def record_update(self, index: torch.Tensor, values: torch.Tensor) -> None:
        """Log ΔC[index] += values (W is updated by the caller). Compacted every few steps: the per-entry sum
        runs in chronological order either way, so results do not depend on when compaction happens."""
        self._pending.append((index, values.detach().to(self.delta_value.dtype)))
        if len(self._pending) >= _COMPACT_EVERY:
            self.compact()

    @torch.no_grad()
    def compact(self) -> None:
        """Fold the logged updates into the sorted (delta_index, delta_value) record."""
        if not self._pending:
            return
        idx = torch.cat([self.delta_index, *(i for i, _ in self._pending)])
        val = torch.cat([self.delta_value, *(v for _, v in self._pending)])
        self._pending = []
        uniq, inverse = torch.unique(idx, sorted=True, return_inverse=True)
        self.delta_index = uniq
        self.delta_value = val.new_zeros(uniq.numel()).index_add_(0, inverse, val)

    def delta(self) -> tuple[torch.Tensor, torch.Tensor]:
        """ΔC = C − C_init as (sorted flat int64 indices, values)."""
        self.compact()
        return self.delta_index, self.delta_value

    def delta_at(self, index: torch.Tensor) -> torch.Tensor:
        """ΔC values at sorted flat `index` (zeros where never updated)."""
        self.compact()
        if self.delta_index.numel() == 0:
            return self.delta_value.new_zeros(index.numel())
        pos = torch.searchsorted(self.delta_index, index).clamp(max=self.delta_index.numel() - 1)
        found = self.delta_index[pos] == index
        return torch.where(found, self.delta_value[pos], torch.zeros_like(self.delta_value[pos]))

    @torch.no_grad()
    def get_delta_weight(self) -> torch.Tensor:
        """ΔW = P ΔC Qᵀ, dense (D_out, D_in), from the stored sparse ΔC."""
        self.compact()
        out = self.delta_value.new_zeros(self.d_out, self.d_in)
        idx = self.delta_index
        apply_sparse_update(out, idx // self.d_in, idx % self.d_in, self.delta_value, self.P, self.Q)
        return out

    def extra_repr(self) -> str:
        basis = "identity" if self.P is None else "hosvd"
        return f"d_out={self.d_out}, d_in={self.d_in}, k={self.k}, group={self.group!r}, basis={basis}"

    def _apply(self, fn: Any, recurse: bool = True) -> SparseGradLinear:
        """`.to()`, `.cuda()`, `.half()`…: the base layer converts as asked; the layer's own tensors only move
        (float64 is honoured for bases and ΔC, any lower precision is not: the basis must stay orthogonal).
        Between a float32 and a low-precision weight, ΔW moves between the weight and the side path."""
        self.compact()
        w = self.weight
        probe = fn(torch.zeros(1, dtype=w.dtype, device=w.device))
        device = probe.device
        keep = torch.float64 if fn(torch.zeros(1, device=w.device)).dtype == torch.float64 else torch.float32
        low_after = is_low_precision(probe.dtype)
        with torch.no_grad():
            self._before_weight_cast(low_after)
            self.base_layer._apply(fn, recurse)
            for name in ("P", "Q", "delta_value"):
                t = self._buffers[name]
                if t is not None:
                    self._buffers[name] = _shared_to(t, device, keep)
            for name in ("delta_index", "support_index"):
                t = self._buffers[name]
                if t is not None:
                    self._buffers[name] = t.to(device)
            self.coef.data = torch.zeros(1, dtype=keep, device=device).expand(self.coef.shape)
            self._support = None
            if self.block is not None:
                self.block = self.block.to(device)
            self._after_weight_cast()
        return self

    @torch.no_grad()
    def set_weight_dtype(self, dtype: torch.dtype) -> None:
        """Store the base weight in `dtype` (alone: a trainable bias keeps its own), ΔW moving between the
        weight and the side path as in `.to()`."""
        self.compact()
        self._before_weight_cast(is_low_precision(dtype))
        weight = module_weight(self.base_layer)
        weight.data = weight.data.to(dtype)
        self._after_weight_cast()

    def reset_side_path(self) -> None:
        """Rebuild the side path from the ΔC record, laid out over `grad_support()` (where every update of a
        block or of a fixed support never re-chosen stays). Call after the support settings change."""
        self.compact()
        self.side = DeltaPath.of(
            self.delta_index,
            self.delta_value,
            self.d_out,
            self.d_in,
            self.delta_value.dtype,
            self.grad_support(),
        )

    def _before_weight_cast(self, low_after: bool) -> None:
        if self.side is None and low_after:  # W holds base + ΔW: take ΔW out before rounding
            self.weight.sub_(self.get_delta_weight().to(self.weight.dtype))

    def _after_weight_cast(self) -> None:
        low_before, low_after = self.side is not None, is_low_precision(self.weight.dtype)
        self.side = None
        if low_after:
            self.reset_side_path()
        elif low_before:  # the weight is full precision again: ΔW goes back into it
            self.weight.add_(self.get_delta_weight().to(self.weight.dtype))

    # The placeholder is not state; the sparse buffers change size during training.
    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        self.compact()
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination.pop(prefix + "coef", None)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        self._pending = []
        for name in ("delta_index", "delta_value", "support_index"):
            value = state_dict.get(prefix + name)
            if value is not None:
                setattr(self, name, torch.empty_like(value))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if prefix + "coef" in missing_keys:
            missing_keys.remove(prefix + "coef")
        if self.side is not None:
            self.reset_side_path()
