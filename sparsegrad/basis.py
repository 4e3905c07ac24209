"""The preliminary phase: a streaming HOSVD of weight gradients, one (P, Q) per group of target layers."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsegrad.config import SparseGradConfig
from sparsegrad.function import column_major
from sparsegrad.targets import (
    Target,
    find_head_modules,
    find_target_modules,
    infer_task,
    is_conv1d,
    module_weight,
)

Reduce = Callable[[torch.Tensor], object]  # an in-place sum over processes, e.g. torch.distributed.all_reduce


@dataclass
class Basis:
    """Orthogonal bases per group: P (D_out, D_out), Q (D_in, D_in), columns by descending singular value.

    `layer_group` maps each target layer name to its group key; `grad_sum` holds each layer's gradient summed
    over the basis steps (original basis, (D_out, D_in)), used to choose a fixed support or a support block
    (kept only when the config asks for either).
    """

    p: dict[str, torch.Tensor]
    q: dict[str, torch.Tensor]
    layer_group: dict[str, str]
    grad_sum: dict[str, torch.Tensor] = field(default_factory=dict)
    steps: int = 0
    extra_seconds: float = 0.0  # time spent on Gram accumulation + eigh, beyond the gradient steps
    # what `inject` chose from grad_sum, per layer: the tensors "support" (fixed support), "block_rows" and
    # "block_cols", and the settings they were chosen for; enough to inject again once grad_sum is dropped
    choices: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    choice_keys: dict[str, str] = field(default_factory=dict)

    def drop_gradients(self) -> None:
        """Free the summed gradients once `inject` has made its choices from them (they hold a float32 copy
        of every target weight); a later inject with the same support settings reuses the choices."""
        self.grad_sum.clear()

    def pair(self, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(P, Q) for a target layer name."""
        if layer not in self.layer_group:
            raise KeyError(
                f"basis has no entry for layer {layer!r}; it covers {sorted(self.layer_group)[:4]}…"
            )
        g = self.layer_group[layer]
        return self.p[g], self.q[g]

    def save(self, path: str | Path) -> None:
        """Write the basis to one safetensors file (for resuming a job)."""
        from safetensors.torch import save_file

        tensors = {f"p::{g}": t.contiguous() for g, t in self.p.items()}
        tensors |= {f"q::{g}": t.contiguous() for g, t in self.q.items()}
        tensors |= {f"grad_sum::{n}": t.contiguous() for n, t in self.grad_sum.items()}
        tensors |= {
            f"choice::{n}::{k}": t.contiguous() for n, c in self.choices.items() for k, t in c.items()
        }
        meta = {f"group::{n}": g for n, g in self.layer_group.items()}
        meta |= {f"choice_key::{n}": key for n, key in self.choice_keys.items()}
        meta |= {"steps": str(self.steps), "extra_seconds": repr(self.extra_seconds)}
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> Basis:
        """Inverse of `save`."""
        from safetensors import safe_open

        out = cls({}, {}, {})
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            for key in f.keys():
                kind, _, name = key.partition("::")
                tensor = f.get_tensor(key)
                if kind == "choice":
                    layer, _, part = name.rpartition("::")
                    out.choices.setdefault(layer, {})[part] = tensor
                    continue
                if kind in ("p", "q"):
                    tensor = column_major(tensor)
                getattr(out, {"p": "p", "q": "q", "grad_sum": "grad_sum"}[kind])[name] = tensor
        out.layer_group = {k[len("group::") :]: v for k, v in meta.items() if k.startswith("group::")}
        out.choice_keys = {
            k[len("choice_key::") :]: v for k, v in meta.items() if k.startswith("choice_key::")
        }
        out.steps = int(meta.get("steps", "0"))
        out.extra_seconds = float(meta.get("extra_seconds", "0"))
        return out


# The Gram sums are accumulated (and all-reduced) in float64. Each per-layer, per-step product x xᵀ is
# computed in float32, and is the same on one process and on N (a rank computes whole basis batches, as
# one process does); what differs is the order in which those products are summed (one running sum against
# N partial sums all-reduced). In float32 that order moves the sums by ~1e-7 relative, enough to turn the
# eigenvectors of the smallest, closely spaced eigenvalues by ~1e-2 rad; in float64 the sums agree to
# ~1e-16 and one process and N build the same basis to float32 rounding.
GRAM_DTYPE = torch.float64


# The basis is rounded to bfloat16 values (held in float32): the delta file then stores its columns in 2
# bytes losslessly (save_delta), and training, evaluation and every merge use these same values. Orthogonal
# to bf16 rounding (|PᵀP - I| ~ 1e-3) is all SparseGrad needs: W = W0 + P ΔC Qᵀ and dL/dC = Pᵀ (dL/dW) Q
# are a reparametrisation for any invertible P, Q, and nothing inverts them.
BASIS_VALUES = torch.bfloat16


def _eigvecs_desc(gram: torch.Tensor) -> torch.Tensor:
    """Eigenvectors of a symmetric PSD (D, D) matrix whose upper triangle is set, by descending eigenvalue,
    rounded to BASIS_VALUES and held in float32 (`eigh` runs in the Gram sum's own dtype, float64)."""
    _, vecs = torch.linalg.eigh(gram, UPLO="U")
    return column_major(vecs.flip(1).to(BASIS_VALUES).to(torch.float32))


def _gram_add(acc: torch.Tensor, x: torch.Tensor, rows: bool) -> None:
    """Upper triangle of acc += x xᵀ (rows=True, x: (D, n)) or xᵀ x (rows=False, x: (n, D)).

    Done as row blocks of the upper triangle (block i: rows i against columns i onwards), which skips most
    of the lower triangle: with 4 blocks 10/16 of a full product's multiply-adds, same matmul speed.
    Each block's product is computed in x's dtype (float32 matmul speed; at most a quarter of the (D, D)
    triangle alive at a time) and added to `acc` (float64, `GRAM_DTYPE`).
    `_eigvecs_desc` reads the upper triangle only.
    """
    d = acc.shape[0]
    n_blocks = max(1, min(4, d // 384))
    edges = [d * i // n_blocks for i in range(n_blocks + 1)]
    for lo, hi in itertools.pairwise(edges):
        if rows:
            acc[lo:hi, lo:].add_(x[lo:hi] @ x[lo:].t())
        else:
            acc[lo:hi, lo:].add_(x[:, lo:hi].t() @ x[:, lo:])


def _move(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _loss(model: nn.Module, batch: Mapping[str, Any], device: torch.device) -> torch.Tensor:
    loss = model(**_move(batch, device)).loss
    if loss is None:
        raise ValueError("model(**batch).loss is None: the batches must carry labels")
    return loss


def _fit_head(
    model: nn.Module, batches: list[Mapping[str, Any]], cfg: SparseGradConfig, device: torch.device
) -> dict[nn.Parameter, torch.Tensor]:
    """Train the task head alone (Adam, lr 1e-3) for cfg.basis_probe_steps steps over `batches`; returns
    its parameters' values from before, for the caller to restore. Every parameter is frozen on entry."""
    heads = find_head_modules(model, cfg.task or infer_task(model))
    head = [p for h in heads for p in model.get_submodule(h).parameters()]
    if not head or not batches:
        return {}
    saved = {p: p.detach().clone() for p in head}
    for p in head:
        p.requires_grad_(True)
    opt = torch.optim.Adam(head, lr=1e-3)
    for i in range(cfg.basis_probe_steps):
        _loss(model, batches[i % len(batches)], device).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    for p in head:
        p.requires_grad_(False)
    return saved


def compute_basis(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    cfg: SparseGradConfig,
    targets: list[Target] | None = None,
    reduce: Reduce | None = None,
) -> Basis:
    """Run `cfg.basis_steps` forward/backward steps (`model(**batch).loss`) and build the HOSVD bases.

    `reduce` (in place, e.g. a `torch.distributed.all_reduce`) is applied to every Gram sum, and to every
    summed gradient kept to choose a support, before they are used: processes that each saw part of the
    data then build the same basis and choose the same supports.

    Streaming form: per group, accumulate Σ G Gᵀ (D_out, D_out) and Σ Gᵀ G (D_in, D_in) in float64 (float32
    products, summed in float64: one process and N then sum to the same basis, see `GRAM_DTYPE`) over
    every layer and step (an upper-triangle product per layer, one layer's float32 gradient alive at a
    time; the summed gradients a fixed support or block needs are kept in host memory), then one `eigh`
    each (P, Q = eigenvectors by descending eigenvalue). With `cfg.per_layer_basis` each layer is its own
    group; with `cfg.basis_probe_steps` the head is first fitted alone on the same batches. No weight changes
    in the end: the head (if fitted), the trainable flags, train/eval mode, existing grads and the global RNG
    state are restored afterwards.
    """
    if targets is None:
        targets = find_target_modules(model, cfg.target_modules, cfg.include_gate_proj, cfg.layers)
    modules = {t.name: model.get_submodule(t.name) for t in targets}
    group_of = {t.name: (t.name if cfg.per_layer_basis else t.group) for t in targets}
    params = list(model.parameters())
    saved_flags = [p.requires_grad for p in params]
    saved_grads = [p.grad for p in params]
    was_training = model.training
    device = next(iter(model.parameters())).device
    gram_out: dict[str, torch.Tensor] = {}
    gram_in: dict[str, torch.Tensor] = {}
    grad_sum: dict[str, torch.Tensor] = {}
    extra = 0.0
    steps = 0
    head_saved: dict[nn.Parameter, torch.Tensor] = {}
    try:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
        model.train()
        rng_devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=rng_devices):
            chosen = list(itertools.islice(batches, cfg.basis_steps))  # never pulls a batch it won't use
            if cfg.basis_probe_steps:
                head_saved = _fit_head(model, chosen, cfg, device)
            for m in modules.values():
                module_weight(m).requires_grad_(True)
            for batch in chosen:
                _loss(model, batch, device).backward()
                t0 = time.perf_counter()
                with torch.no_grad():
                    for name, m in modules.items():
                        weight = module_weight(m)
                        grad = weight.grad
                        assert grad is not None, f"no gradient reached target layer {name}"
                        g = (grad.t() if is_conv1d(m) else grad).float()  # (D_out, D_in) layout
                        weight.grad = None
                        key = group_of[name]
                        if key not in gram_out:
                            shape_out, shape_in = (g.shape[0],) * 2, (g.shape[1],) * 2
                            gram_out[key] = torch.zeros(shape_out, dtype=GRAM_DTYPE, device=device)
                            gram_in[key] = torch.zeros(shape_in, dtype=GRAM_DTYPE, device=device)
                        # streamed: Σ_l G_l G_lᵀ and Σ_l G_lᵀ G_l, one layer's gradient alive at a time
                        _gram_add(gram_out[key], g, rows=True)
                        _gram_add(gram_in[key], g, rows=False)
                        if cfg.support == "fixed" or cfg.support_block is not None:
                            # only to choose a fixed support or a block; kept in host memory
                            if name in grad_sum:
                                grad_sum[name].add_(g.cpu())
                            else:
                                grad_sum[name] = g.cpu().clone()
                        del g
                extra += time.perf_counter() - t0
                steps += 1
        if steps == 0:
            raise ValueError("compute_basis got no batches; it needs at least one training batch")
        t0 = time.perf_counter()
        if reduce is not None:
            for tensor in [*gram_out.values(), *gram_in.values(), *grad_sum.values()]:
                reduce(tensor)
        # each float64 Gram sum is freed once its float32 eigenvectors exist
        p_out = {k: _eigvecs_desc(gram_out.pop(k)) for k in list(gram_out)}
        q_out = {k: _eigvecs_desc(gram_in.pop(k)) for k in list(gram_in)}
        extra += time.perf_counter() - t0
    finally:
        with torch.no_grad():
            for p, value in head_saved.items():
                p.copy_(value)
        for p, flag, grad in zip(params, saved_flags, saved_grads, strict=True):
            p.requires_grad_(flag)
            p.grad = grad
        model.train(was_training)
    return Basis(p_out, q_out, group_of, grad_sum, steps, extra)
