"""Injection into a model, what trains beside the sparse layers, merging back to plain layers."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from sparsegrad.basis import Basis
from sparsegrad.config import SparseGradConfig
from sparsegrad.function import Support
from sparsegrad.layer import SparseGradLinear
from sparsegrad.memory import k_of
from sparsegrad.targets import (
    Target,
    find_head_modules,
    find_target_modules,
    get_submodule_parent,
    infer_task,
    module_weight,
)

INFO_ATTR = "sparsegrad_info"


@dataclass
class InjectionInfo:
    """What an injected model knows about itself (needed by save_delta)."""

    cfg: SparseGradConfig
    method: str  # "sparsegrad" | "meprop"
    task: str
    targets: list[Target]
    layer_fingerprints: dict[str, str]  # sha256 of each base target weight, taken at inject time
    fingerprint: str  # sha256 over all of them
    head_modules: list[str]


FINGERPRINT_KIND = "bf16-values"  # how layer fingerprints are taken (a delta records it)


def weight_fingerprint(weight: torch.Tensor, kind: str = FINGERPRINT_KIND) -> str:
    """sha256 of a tensor's shape and values rounded to bf16 ("bf16-values"): the same for a float32 base and
    its bf16 copy, so a delta loads into the base in either precision. "exact" (deltas of version 2 and
    before): the dtype and the raw bytes."""
    t = weight.detach().contiguous().cpu()
    if kind == FINGERPRINT_KIND:
        t = t.to(torch.bfloat16)
        h = hashlib.sha256(f"{tuple(t.shape)}:".encode())
    else:
        h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}:".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def combined_fingerprint(layer_fingerprints: dict[str, str]) -> str:
    """sha256 over the sorted (name, layer fingerprint) pairs."""
    text = "\n".join(f"{n}={f}" for n, f in sorted(layer_fingerprints.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def _is_norm(module: nn.Module) -> bool:
    cls = type(module).__name__
    return isinstance(module, nn.LayerNorm) or "LayerNorm" in cls or "RMSNorm" in cls


def _set_trainable(
    model: nn.Module, cfg: SparseGradConfig, target_names: set[str], heads: list[str], task: str
) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    train_head = cfg.train_head if cfg.train_head is not None else task != "causal_lm"
    for name, module in model.named_modules():
        in_target = any(name == t or name.startswith(t + ".") for t in target_names)
        if isinstance(module, SparseGradLinear):
            module.coef.requires_grad_(True)
            continue
        for pname, p in module.named_parameters(recurse=False):
            if in_target:
                # base weight stays frozen; a target's bias trains densely with train_bias / train_rest_dense
                if pname == "bias" and (cfg.train_bias or cfg.train_rest_dense):
                    p.requires_grad_(True)
                continue
            if (
                cfg.train_rest_dense
                or (cfg.train_bias and pname == "bias")
                or (cfg.train_layernorm and _is_norm(module))
            ):
                p.requires_grad_(True)
    if train_head:
        for h in heads:
            for p in model.get_submodule(h).parameters():
                p.requires_grad_(True)


def _rotated(grad_sum: torch.Tensor, p: torch.Tensor | None, q: torch.Tensor | None) -> torch.Tensor:
    """Pᵀ G Q for the basis phase's summed gradient G (D_out, D_in)."""
    g = grad_sum.float()
    if p is not None:
        g = p.t() @ g
    if q is not None:
        g = g @ q
    return g


def support_block(g: torch.Tensor, k: int, factor: float) -> Support:
    """The rows × columns block of about factor·k coefficients where |g|² (the rotated basis-phase gradient)
    has the most energy: rows and columns chosen apart, by their summed energy. Its shape R/C = D_in/D_out
    minimises the backward's extra products N·(D_out·R + D_in·C) for a given area R·C >= k."""
    d_out, d_in = g.shape
    area = min(d_out * d_in, math.ceil(factor * k))
    r = min(d_out, max(1, round(math.sqrt(area * d_in / d_out))))
    c = min(d_in, math.ceil(area / r))
    r = min(d_out, math.ceil(area / c))
    energy = g.square()
    rows = torch.topk(energy.sum(1), r, sorted=False).indices.sort().values
    cols = torch.topk(energy.sum(0), c, sorted=False).indices.sort().values
    return Support.block(rows, cols, d_in)


def _fixed_support(g: torch.Tensor, k: int, block: Support | None) -> torch.Tensor:
    """k sorted flat indices of the largest |g| (rotated basis-phase gradient), within `block` if given."""
    if block is None:
        return torch.topk(g.abs().reshape(-1), k, sorted=False).indices.sort().values
    inside = g.reshape(-1)[block.flat].abs()
    return block.flat[torch.topk(inside, k, sorted=False).indices].sort().values


def _choose(
    basis: Basis,
    name: str,
    cfg: SparseGradConfig,
    k: int,
    d_in: int,
    p: torch.Tensor | None,
    q: torch.Tensor | None,
    device: torch.device,
) -> tuple[torch.Tensor | None, Support | None]:
    """A layer's fixed support and support block, chosen from the basis phase's summed gradient (and recorded
    in the basis), or read back from the basis once its gradients were dropped."""
    key = f"{cfg.support}:{cfg.support_block}:{cfg.density}"
    if name in basis.grad_sum:
        g = _rotated(basis.grad_sum[name].to(device), p, q)
        block = support_block(g, k, cfg.support_block) if cfg.support_block is not None else None
        support = _fixed_support(g, k, block) if cfg.support == "fixed" else None
        chosen = {"support": support} if support is not None else {}
        if block is not None:
            chosen |= {"block_rows": block.rows, "block_cols": block.cols}
        basis.choices[name] = {part: t.cpu() for part, t in chosen.items()}
        basis.choice_keys[name] = key
        return support, block
    if basis.choice_keys.get(name) != key:
        raise ValueError(
            f"support='fixed' and support_block need the basis phase's gradient for layer {name!r} (or the "
            f"choices an earlier inject made with the same support settings)"
        )
    chosen = {part: t.to(device) for part, t in basis.choices[name].items()}
    block = None
    if "block_rows" in chosen:
        block = Support.block(chosen["block_rows"], chosen["block_cols"], d_in)
    return chosen.get("support"), block


def inject(
    model: nn.Module, cfg: SparseGradConfig, basis: Basis | None, *, method: str = "sparsegrad"
) -> nn.Module:
    """Wrap every target layer of `model` in a `SparseGradLinear` (in place) and set what trains.

    Outputs are unchanged at injection. Everything is frozen except the layers' coefficients, the task head
    (cfg.train_head) and what cfg.train_layernorm / train_bias / train_rest_dense add. The model remembers the
    base target weights' fingerprint for `save_delta`. `basis=None` with method="meprop" uses the identity
    basis (MeProp: top-k of dL/dW). Returns the same model.
    """
    if hasattr(model, INFO_ATTR):
        raise ValueError("model is already injected; call merge() first or start from a fresh base model")
    if basis is None and method != "meprop":
        raise ValueError("inject needs a Basis from compute_basis (basis=None is only for method='meprop')")
    targets = find_target_modules(model, cfg.target_modules, cfg.include_gate_proj, cfg.layers)
    task = cfg.task or infer_task(model)
    prints: dict[str, str] = {}
    on_device: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
    for t in targets:
        base = model.get_submodule(t.name)
        base_weight = module_weight(base)
        prints[t.name] = weight_fingerprint(base_weight)
        p = q = None
        if basis is not None:
            p, q = basis.pair(t.name)
            if p.shape[0] != t.d_out or q.shape[0] != t.d_in:
                raise ValueError(
                    f"basis for layer {t.name!r} is ({p.shape[0]}, {q.shape[0]}), "
                    f"layer is ({t.d_out}, {t.d_in})"
                )
            dev = base_weight.device
            key = (basis.layer_group[t.name], dev)
            if key not in on_device:  # one copy per group and device, shared by its layers
                on_device[key] = (p.to(dev), q.to(dev))
            p, q = on_device[key]
        k = k_of(t.d_out, t.d_in, cfg.density)
        support = block = None
        if cfg.support == "fixed" or cfg.support_block is not None:
            if basis is None:
                raise ValueError("support='fixed' and support_block need a basis (MeProp uses neither)")
            support, block = _choose(basis, t.name, cfg, k, t.d_in, p, q, base_weight.device)
        layer = SparseGradLinear(base, p, q, k, t.group, support)
        layer.grad_on_support_only = support is not None and not cfg.support_refresh_every
        layer.block = block
        layer.shape_placeholder()
        if layer.side is not None:
            layer.reset_side_path()  # laid out over the support settings just made
        parent, child = get_submodule_parent(model, t.name)
        setattr(parent, child, layer)
    heads = find_head_modules(model, task)
    _set_trainable(model, cfg, {t.name for t in targets}, heads, task)
    info = InjectionInfo(cfg, method, task, targets, prints, combined_fingerprint(prints), heads)
    object.__setattr__(model, INFO_ATTR, info)
    return model


def get_info(model: nn.Module) -> InjectionInfo:
    """The model's InjectionInfo; a clear error if it was never injected."""
    info = getattr(model, INFO_ATTR, None)
    if not isinstance(info, InjectionInfo):
        raise ValueError("model has no SparseGrad layers: call sparsegrad.inject (or apply_meprop) first")
    return info


def sparse_layers(model: nn.Module) -> dict[str, SparseGradLinear]:
    """Name (of the original target module) -> SparseGradLinear."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SparseGradLinear)}


def merge(model: nn.Module) -> nn.Module:
    """Replace every SparseGradLinear by its base layer, whose weight then holds W_base + P ΔC Qᵀ (a
    low-precision weight takes its side path's ΔW here, rounded once).

    In place; the result is a plain model (nn.Linear / Conv1D) that does not need sparsegrad.
    """
    get_info(model)
    for name, layer in sparse_layers(model).items():
        layer.fold_side_path()
        parent, child = get_submodule_parent(model, name)
        setattr(parent, child, layer.base_layer)
    object.__delattr__(model, INFO_ATTR)
    return model


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters with requires_grad (for full fine-tuning: all of them after `requires_grad_(True)`)."""
    return [p for p in model.parameters() if p.requires_grad]


def count_trainable_parameters(model: nn.Module) -> int:
    """Trainable parameters, counting each SparseGrad layer as its k coefficients per step."""
    layers = sparse_layers(model).values()
    placeholders = {id(m.coef) for m in layers}
    dense = sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in placeholders)
    return dense + sum(m.k for m in layers if m.coef.requires_grad)
