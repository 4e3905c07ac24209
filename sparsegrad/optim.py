"""AdamW over the selected coefficients (sparse state) and the dense trainables, in one optimizer object."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from sparsegrad._index import merge_sorted, relay, restrict
from sparsegrad.basis import Reduce
from sparsegrad.function import Support, values_at
from sparsegrad.layer import SparseGradLinear
from sparsegrad.memory import k_of
from sparsegrad.model import get_info, sparse_layers

_SPARSE_KEYS = ("exp_avg", "exp_avg_sq", "step", "delta")


class SparseGradAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, bias correction) for a SparseGrad-injected model.

    Sparse part: the layers' `coef` placeholders, processed per basis group (layers sharing P, Q and shape)
    with a few large batched operations. Each step picks, per layer, the top-k |dL/dC| entries
    (support="dynamic") or the fixed support, updates Adam moments only there and folds the update into the
    weights (W += P S Qᵀ). State per group, stored under its first layer's `coef`: a sorted int64 `index` of
    (layer position · D_out·D_in + flat coefficient) and, on those entries only, `exp_avg`, `exp_avg_sq`,
    `step` (per-entry count of updates) and `delta` (ΔC, for weight decay), plus `global_step`. Bias
    correction (cfg.bias_correction) counts optimizer steps ("global", as SparseAdam) or each entry's updates
    ("entry"). Entries: the union of ever-selected ones (dynamic) or exactly k per layer (fixed). Entries not
    selected in a step do not move (lazy, as SparseAdam). Weight decay acts on ΔC (towards the base model).
    With cfg.selection="adam" (dynamic support) the moments are dense instead, (L, D_out·D_in) or (L, block),
    updated every step as plain Adam in the basis would, and the k entries with the largest step move
    (`_adam_selection_step`).
    With support_refresh_every=R a dense Σ|dL/dC| over the last R steps re-chooses the fixed support.
    `reduce` (in place, e.g. torch.distributed.all_reduce and a division by the world size) is applied to
    each layer's dL/dC before selection, so processes that each saw part of a batch pick the same support and
    keep the same state; compute_basis takes the same hook.
    Dense part: plain AdamW, the formula of torch.optim.AdamW.
    state_dict()/load_state_dict() are the base class's: all state is tensors keyed by parameter.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        dense_params: list[nn.Parameter] | None = None,
        dense_lr: float | None = None,
        reduce: Reduce | None = None,
    ) -> None:
        dense_lr = lr if dense_lr is None else dense_lr
        self.reduce = reduce
        if min(lr, dense_lr) < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(
                f"bad AdamW hyperparameters: lr={lr}, dense_lr={dense_lr}, betas={betas}, eps={eps}, "
                f"wd={weight_decay}"
            )
        info = get_info(model)
        self.support = info.cfg.support
        self.refresh_every = info.cfg.support_refresh_every
        self.global_bias_correction = info.cfg.bias_correction == "global"
        self.adam_selection = info.cfg.selection == "adam"
        self.max_union = info.cfg.max_delta_density  # the bounded delta: see capped_scores
        layers = [m for m in sparse_layers(model).values() if m.coef.requires_grad]
        groups: dict[tuple[int, int, int, int], list[SparseGradLinear]] = {}
        for m in layers:
            groups.setdefault((id(m.P), id(m.Q), m.d_out, m.d_in), []).append(m)
        self._groups: dict[int, list[SparseGradLinear]] = {id(g[0].coef): g for g in groups.values()}
        placeholders = {id(m.coef) for m in sparse_layers(model).values()}
        if dense_params is None:
            dense_params = [p for p in model.parameters() if p.requires_grad and id(p) not in placeholders]
        param_groups: list[dict[str, Any]] = []
        if layers:
            param_groups.append({"params": [m.coef for m in layers], "kind": "sparse"})
        if dense_params:
            param_groups.append({"params": dense_params, "kind": "dense", "lr": dense_lr})
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(param_groups, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["kind"] == "sparse":
                for p in group["params"]:
                    if id(p) in self._groups:
                        self._sparse_group_step(self._groups[id(p)], group)
            else:
                for p in group["params"]:
                    if p.grad is not None:
                        self._dense_step(p, group)
        return loss

    def _dense_step(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        grad = p.grad
        assert grad is not None
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        st = self.state[p]
        if not st:
            st["step"] = torch.tensor(0.0)
            st["exp_avg"] = torch.zeros_like(p)
            st["exp_avg_sq"] = torch.zeros_like(p)
        st["step"] += 1
        step = float(st["step"])
        p.mul_(1 - lr * wd)
        st["exp_avg"].lerp_(grad, 1 - b1)
        st["exp_avg_sq"].mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (st["exp_avg_sq"].sqrt() / math.sqrt(1 - b2**step)).add_(eps)
        p.addcdiv_(st["exp_avg"], denom, value=-lr / (1 - b1**step))

    def _support(
        self, layers: list[SparseGradLinear], grads: torch.Tensor, st: dict[str, Any]
    ) -> torch.Tensor:
        """(L, k) sorted flat indices of a fixed support (re-chosen every `refresh_every` steps); grads:
        (L, D_out·D_in)."""
        k = layers[0].k
        if self.refresh_every:
            acc = st.get("refresh_acc")
            st["refresh_acc"] = grads.abs() if acc is None else acc.add_(grads.abs())
            st["refresh_count"] = st.get("refresh_count", torch.tensor(0)) + 1
            if int(st["refresh_count"]) >= self.refresh_every:
                new = torch.topk(st["refresh_acc"], k, dim=1, sorted=False).indices.sort(dim=1).values
                for layer, row in zip(layers, new, strict=True):
                    layer.support_index = row.clone()
                st["refresh_acc"] = torch.zeros_like(grads)
                st["refresh_count"] = torch.tensor(0)
        supports = [layer.support_index for layer in layers]
        assert all(s is not None for s in supports)
        return torch.stack(supports)  # type: ignore[arg-type]

    def _sparse_group_step(self, layers: list[SparseGradLinear], group: dict[str, Any]) -> None:
        if any(m.coef.grad is None for m in layers):
            if all(m.coef.grad is None for m in layers):
                return
            raise RuntimeError(
                "some layers of a SparseGrad group got no gradient; all must take part in forward"
            )
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        first = layers[0]
        n = first.d_out * first.d_in
        st = self.state[first.coef]
        grads_in = [m.coef.grad for m in layers]  # dense (D_out, D_in), or flat on the grad support
        if self.reduce is not None:
            for grad in grads_in:  # one layer at a time, before anything reads it
                self.reduce(grad)  # type: ignore[arg-type]
        # every layer's block (dL/dC is zero outside them), or None unless all have one
        present = [m_.block for m_ in layers if m_.block is not None]
        blocks = present if len(present) == len(layers) else None
        if self.adam_selection:
            self._adam_selection_step(layers, grads_in, blocks, group, st, self.max_union)
            return
        if not st:
            st["index"] = torch.zeros(0, dtype=torch.int64, device=first.weight.device)
            for key in _SPARSE_KEYS:
                st[key] = first.weight.new_zeros(0, dtype=first.coef.dtype)
        if self.support == "fixed" and not self.refresh_every:
            # the gradient is only read on the support: gather there, no (L, N) copy
            top = torch.stack([m.support_index for m in layers])  # type: ignore[misc]  # (L, k)
            g = torch.cat([values_at(f, t) for f, t in zip(grads_in, top, strict=True)])  # type: ignore[arg-type]
            supports: Sequence[Support | None] = [m_.fixed_support() for m_ in layers]
        else:
            if self.support == "dynamic" and blocks is not None:
                # top-k among the blocks' entries
                cand, inside = _block_grads(grads_in, blocks)
                scores = inside.abs()
                for i, layer in enumerate(layers):
                    scores[i] = capped_scores(layer, scores[i], cand[i], self.max_union)
                pick = torch.topk(scores, first.k, dim=1, sorted=False).indices.sort(dim=1).values
                top, g = cand.gather(1, pick), inside.gather(1, pick).reshape(-1)
                supports = _block_supports(top, pick, blocks)
            elif self.support == "dynamic":
                top, g = _per_layer_top_k(grads_in, first.k, layers, self.max_union)  # (L, k), (L·k,)
                supports = [Support.of(t, first.d_in) for t in top]
            else:
                grads = _dense_grads(grads_in)  # (L, N)
                top = self._support(layers, grads, st)  # (L, k)
                g = grads.gather(1, top).reshape(-1)  # (L·k,)
                supports = [Support.of(t, first.d_in) for t in top]
        gid = (top + n * torch.arange(len(layers), device=top.device).unsqueeze(1)).reshape(-1)  # sorted
        if self.support == "fixed" and not torch.equal(st["index"], gid):
            self._move_fixed_state(layers, st, gid, n)
        if self.support == "fixed":  # the state holds exactly this support, in this order
            pos = torch.arange(gid.numel(), device=gid.device)
        else:
            merged, pos, layout = merge_sorted(st["index"], gid)
            if layout is not None:
                for key in _SPARSE_KEYS:
                    st[key] = relay(st[key], layout)
                st["index"] = merged
        step = st["step"][pos] + 1
        m = st["exp_avg"][pos].lerp_(g, 1 - b1)
        v = st["exp_avg_sq"][pos].mul_(b2).addcmul_(g, g, value=1 - b2)
        t = step
        if self.global_bias_correction:
            # a checkpoint from before the counter resumes at its most-updated entry's count
            if "global_step" not in st:
                st["global_step"] = st["step"].max() if st["step"].numel() else st["step"].new_zeros(())
            st["global_step"] = st["global_step"] + 1
            t = st["global_step"]
        bc1 = 1 - torch.pow(b1, t)
        bc2 = 1 - torch.pow(b2, t)
        update = (m / bc1).div_(v.sqrt().div_(bc2.sqrt()).add_(eps)).mul_(-lr)
        delta = st["delta"][pos]
        if wd:
            update.sub_(delta, alpha=lr * wd)
        st["step"][pos] = step
        st["exp_avg"][pos] = m
        st["exp_avg_sq"][pos] = v
        st["delta"][pos] = delta + update
        update2 = update.view(len(layers), -1)  # (L, k)
        for layer, idx, sup, upd in zip(layers, top, supports, update2, strict=True):
            # W += P S Qᵀ through the basis columns of this step's support only
            layer.apply_update(idx, upd, sup)

    @staticmethod
    def _adam_selection_step(
        layers: list[SparseGradLinear],
        grads_in: list[torch.Tensor | None],
        blocks: list[Support] | None,
        group: dict[str, Any],
        st: dict[str, Any],
        max_union: float | None = None,
    ) -> None:
        """selection="adam": every candidate coefficient (all of them, or the block's) has Adam moments that
        follow dL/dC every step; only the k entries with the largest AdamW step move. A coefficient whose
        gradient keeps its sign gathers momentum until it is picked, where the paper's rule picks the step's
        largest |dL/dC|, a sample that favours batch noise. State: exp_avg, exp_avg_sq (and with weight decay
        delta, ΔC) of shape (L, candidates), global_step. One layer at a time: no (L, candidates) temporaries
        beside the state."""
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        first = layers[0]
        if "exp_avg" not in st:
            shape = (len(layers), len(blocks[0]) if blocks is not None else first.d_out * first.d_in)
            zeros = first.weight.new_zeros(shape, dtype=first.coef.dtype)
            st["exp_avg"], st["exp_avg_sq"] = zeros, torch.zeros_like(zeros)
            st["global_step"] = zeros.new_zeros(())
            if wd:
                st["delta"] = torch.zeros_like(zeros)
        st["global_step"] = st["global_step"] + 1
        t = st["global_step"]
        bc1, bc2 = 1 - torch.pow(b1, t), 1 - torch.pow(b2, t)
        for i, (layer, grad) in enumerate(zip(layers, grads_in, strict=True)):  # one layer at a time
            assert grad is not None
            block = blocks[i] if blocks is not None else None
            if block is None:
                g = grad.to_dense().reshape(-1)  # (D_out·D_in,)
            else:
                cand = block.flat
                g = values_at(grad, cand)  # (block entries,)
            m, v = st["exp_avg"][i], st["exp_avg_sq"][i]  # views: updated in place
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            step = (m / bc1).div_((v / bc2).sqrt_().add_(eps))
            if wd:
                step.add_(st["delta"][i], alpha=wd)
            scores = capped_scores(layer, step.abs(), None if block is None else cand, max_union)
            pick = torch.topk(scores, first.k, sorted=False).indices.sort().values  # (k,)
            update = step[pick].mul_(-lr)
            if wd:
                st["delta"][i].index_add_(0, pick, update)
            if block is None:
                layer.apply_update(pick, update, Support.of(pick, first.d_in))
            else:
                (sup,) = _block_supports(cand[pick].unsqueeze(0), pick.unsqueeze(0), [block])
                layer.apply_update(sup.flat, update, sup)

    @staticmethod
    def _move_fixed_state(
        layers: list[SparseGradLinear], st: dict[str, Any], gid: torch.Tensor, n: int
    ) -> None:
        """Support changed (first step or refresh): keep the state of entries that stay, start the rest fresh
        (their ΔC is read back from the layers); the state keeps exactly k entries per layer."""
        _, where = restrict(st["index"], gid)
        found = where >= 0
        new_state = {}
        for key in _SPARSE_KEYS:
            old = st[key]
            new = old.new_zeros(gid.numel())
            new[found] = old[where[found]]
            new_state[key] = new
        missing = (~found).nonzero().squeeze(1)
        if missing.numel():
            owner = gid[missing] // n
            for pos_l, layer in enumerate(layers):
                sel = missing[owner == pos_l]
                if sel.numel():
                    new_state["delta"][sel] = layer.delta_at(gid[sel] - pos_l * n)
        st.update(new_state)
        st["index"] = gid

    @torch.no_grad()
    def round_delta(self, dtype: torch.dtype) -> None:
        """Put every layer's ΔC on `dtype`'s grid (each value rounded to the nearest `dtype` number, held in
        float32), W and this optimizer's ΔC (weight decay) following: the model is then exactly base + the
        delta `save_delta(value_dtype=dtype)` writes, with a basis of bf16 values (compute_basis). Each
        value moves by at most half a `dtype` ulp (2^-9 relative for bf16); rounding again changes nothing,
        and training goes on from the rounded values."""
        for layers in self._groups.values():
            for layer in layers:
                idx, val = layer.delta()
                diff = val.to(dtype).to(val.dtype) - val  # exact: two floats this close differ exactly
                moved = diff != 0
                if bool(moved.any()):
                    layer.apply_update(idx[moved], diff[moved])  # val + diff is the rounded value, exactly
            st = self.state[layers[0].coef]
            if "delta" in st:
                self._sync_delta(layers, st)

    @staticmethod
    def _sync_delta(layers: list[SparseGradLinear], st: dict[str, Any]) -> None:
        """This optimizer's ΔC (the weight-decay state) read back from the layers' ΔC."""
        n = layers[0].d_out * layers[0].d_in
        if "index" in st:  # sparse state: entries (layer position · n + flat index)
            gid, delta = st["index"], st["delta"]
            for pos, layer in enumerate(layers):
                sel = (gid // n) == pos
                delta[sel] = layer.delta_at(gid[sel] - pos * n).to(delta.dtype)
            return
        for i, layer in enumerate(layers):  # selection="adam": one row of candidates per layer
            cand = layer.block.flat if layer.block is not None else torch.arange(n, device=st["delta"].device)
            st["delta"][i] = layer.delta_at(cand).to(st["delta"].dtype)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The base class's, except that integer state (coefficient indices, counters) keeps its dtype:
        torch casts every state tensor of a floating-point parameter to that parameter's dtype."""
        saved_ids = [pid for g in state_dict["param_groups"] for pid in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        integer_state = {
            pid: {k: v for k, v in st.items() if isinstance(v, torch.Tensor) and not v.is_floating_point()}
            for pid, st in state_dict["state"].items()
        }
        super().load_state_dict(state_dict)
        by_id = dict(zip(saved_ids, params, strict=True))
        for pid, tensors in integer_state.items():
            for key, value in tensors.items():
                self.state[by_id[pid]][key] = value.to(by_id[pid].device).clone()

    def state_entries(self, layer: SparseGradLinear) -> torch.Tensor:
        """Sorted flat coefficient indices of `layer` that hold optimizer state."""
        for layers in self._groups.values():
            if layer in layers:
                st = self.state.get(layers[0].coef, {})
                n = layer.d_out * layer.d_in
                if self.adam_selection and "exp_avg" in st:  # dense moments: every candidate
                    return (
                        layer.block.flat
                        if layer.block is not None
                        else torch.arange(n, device=layer.weight.device)
                    )
                if "index" not in st:
                    return torch.zeros(0, dtype=torch.int64)
                pos = layers.index(layer)
                idx = st["index"]
                return idx[(idx >= pos * n) & (idx < (pos + 1) * n)] - pos * n
        raise KeyError("layer is not handled by this optimizer")


def capped_scores(
    layer: SparseGradLinear, scores: torch.Tensor, cand: torch.Tensor | None, max_union: float | None
) -> torch.Tensor:
    """The bounded delta (SparseGradConfig.max_delta_density): `scores` (>= 0) of the candidates (flat
    indices `cand`, or every coefficient) with every candidate the top-k may not pick set to -1, so that the
    layer's delta (the union of its updated entries) stays within round(max_union·D_out·D_in) entries.
    While that leaves room for k newcomers nothing changes; then only the best `room` newcomers stay
    eligible beside the entries already in the delta, and once the cap is reached the support is frozen:
    later steps pick among the delta's own entries."""
    if max_union is None:
        return scores
    union = layer.delta()[0]
    room = k_of(layer.d_out, layer.d_in, max_union) - union.numel()
    if room >= layer.k:
        return scores
    flat = cand if cand is not None else torch.arange(scores.numel(), device=scores.device)
    inside = torch.zeros_like(flat, dtype=torch.bool)
    if union.numel():
        pos = torch.searchsorted(union, flat).clamp(max=union.numel() - 1)
        inside = union[pos] == flat
    allowed = inside.clone()
    outside = (~inside).nonzero().squeeze(1)
    if room > 0 and outside.numel():
        best = torch.topk(scores[outside], min(room, outside.numel()), sorted=False).indices
        allowed[outside[best]] = True
    return torch.where(allowed, scores, scores.new_full((), -1.0))


def _per_layer_top_k(
    grads_in: list[torch.Tensor | None],
    k: int,
    layers: list[SparseGradLinear],
    max_union: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each layer's k largest |dL/dC| (sorted flat indices (L, k)) and their values (L·k,), one layer at a
    time: no (L, D_out·D_in) stack of the group's gradients; within the delta's cap (`capped_scores`)."""
    tops, values = [], []
    for f, layer in zip(grads_in, layers, strict=True):
        flat = f.to_dense().reshape(-1)  # type: ignore[union-attr]  # a view of a dense gradient
        scores = capped_scores(layer, flat.abs(), None, max_union)
        top = torch.topk(scores, k, sorted=False).indices.sort().values
        tops.append(top)
        values.append(flat[top])
    return torch.stack(tops), torch.cat(values)


def _dense_grads(grads_in: list[torch.Tensor | None]) -> torch.Tensor:
    """Each layer's dL/dC (dense or sparse COO) as one dense row: (L, D_out·D_in)."""
    return torch.stack([f.to_dense().reshape(-1) for f in grads_in])  # type: ignore[union-attr]


def _block_grads(
    grads_in: list[torch.Tensor | None], blocks: list[Support]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The blocks' flat indices (L, A) (rows sorted) and each layer's dL/dC there (L, A)."""
    cand = torch.stack([b.flat for b in blocks])
    return cand, torch.stack([values_at(f, c) for f, c in zip(grads_in, cand, strict=True)])  # type: ignore[arg-type]


def _block_supports(top: torch.Tensor, pick: torch.Tensor, blocks: list[Support]) -> list[Support]:
    """Supports of the picked entries `top` (L, k), `pick` their positions among the blocks' entries: synced
    through the block's rows and columns, no per-step `unique` of the picked entries."""
    return [
        Support(t, b.rows, b.cols, b.row_pos[p], b.col_pos[p], b.d_in)
        for t, b, p in zip(top, blocks, pick, strict=True)
    ]


def make_optimizer(
    model: nn.Module,
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    dense_lr: float | None = None,
    reduce: Reduce | None = None,
) -> SparseGradAdamW:
    """Optimizer for an injected model: sparse AdamW on the coefficients, AdamW on dense trainables (at
    `dense_lr` when given, else `lr`); `reduce`: see SparseGradAdamW."""
    return SparseGradAdamW(
        model, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, dense_lr=dense_lr, reduce=reduce
    )


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes held by tensors in the optimizer state (moments, indices, step counters)."""
    total = 0
    for st in opt.state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor):
                total += v.numel() * v.element_size()
    return total
