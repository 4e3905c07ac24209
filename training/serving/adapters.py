"""Several SparseGrad fine-tunes on one shared base model, without a copy of its weights each.

A fine-tune is an `Adapter`: per target layer the delta ΔW = P_R ΔC Q_Cᵀ kept factored as two thin
matrices (or dense where that is smaller), and the few dense parameters it trained (head, norms). The base
never changes: a forward hook on each target layer adds x ΔWᵀ, and a parametrization on each trained dense
parameter returns the fine-tune's tensor, both for the adapter that is active in the current context
(`activate`, a ContextVar: two threads can serve two fine-tunes of one base at once).

    x ΔWᵀ = (x Q_C)(P_R ΔC)ᵀ     x: (N, D_in);  Q_C: (D_in, |C|);  P_R ΔC: (D_out, |C|)      (|C| <= |R|)
          = (x Q_C ΔCᵀ) P_Rᵀ                   Q_C ΔCᵀ: (D_in, |R|);  P_R: (D_out, |R|)        (|R| < |C|)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn
from torch.nn.utils import parametrize

from sparsegrad.delta import LAYER_PARTS, check_base, delta_files, read_delta_config
from sparsegrad.delta_codec import decode

_ACTIVE: ContextVar[Adapter | None] = ContextVar("sgft_active_adapter", default=None)


@dataclass
class LayerDelta:
    """x ΔWᵀ for one layer: `left` (D_out, r) and `right` (D_in, r), or `dense` (D_out, D_in)."""

    left: torch.Tensor | None = None
    right: torch.Tensor | None = None
    dense: torch.Tensor | None = None

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """x ΔWᵀ for x (..., D_in), in x's dtype."""
        if self.dense is not None:
            return x @ self.dense.t().to(x.dtype)  # (..., D_out)
        assert self.left is not None and self.right is not None
        return (x @ self.right.to(x.dtype)) @ self.left.t().to(x.dtype)  # (..., r) -> (..., D_out)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.left, self.right, self.dense) if t is not None)


@dataclass
class Adapter:
    """One fine-tune's delta in the factored form the shared base applies around its layers."""

    name: str
    layers: dict[str, LayerDelta]
    params: dict[str, torch.Tensor]  # plain parameter name -> the fine-tune's value
    labels: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Memory this fine-tune holds beyond the shared base."""
        dense = sum(t.numel() * t.element_size() for t in self.params.values())
        return dense + sum(d.nbytes for d in self.layers.values())


def _thin(p_r: torch.Tensor, q_c: torch.Tensor, small: torch.Tensor, d_out: int, d_in: int) -> LayerDelta:
    """ΔW = p_r small q_cᵀ kept as its thinner factorisation (rank min(|R|, |C|)), or dense where the
    factors would not be smaller than ΔW itself."""
    rank = min(small.shape)
    if (d_out + d_in) * rank >= d_out * d_in:
        return LayerDelta(dense=(p_r @ small @ q_c.t()).contiguous())
    if small.shape[1] <= small.shape[0]:
        return LayerDelta(left=(p_r @ small).contiguous(), right=q_c.contiguous())
    return LayerDelta(left=p_r.contiguous(), right=(q_c @ small.t()).contiguous())


def _coo_layer(f: Any, keys: set[str], layer: str, spec: dict[str, Any]) -> LayerDelta | None:
    """A layer of a version 1-3 delta: COO (global row, col) entries, the group's used basis columns."""
    d_out, d_in = spec["shape"]
    idx = f.get_tensor(f"{layer}.indices").long()
    values = f.get_tensor(f"{layer}.values")
    if values.numel() == 0:
        return None
    basis = spec["basis"]
    rows, cols = idx[0], idx[1]
    if f"{basis}.p" in keys:  # positions among the group's stored basis columns
        p, q = f.get_tensor(f"{basis}.p").float(), f.get_tensor(f"{basis}.q").float()
        rows = torch.searchsorted(f.get_tensor(f"{basis}.p_cols").long(), rows)
        cols = torch.searchsorted(f.get_tensor(f"{basis}.q_cols").long(), cols)
    else:
        p, q = torch.eye(d_out), torch.eye(d_in)
    r, row_pos = torch.unique(rows, return_inverse=True)
    c, col_pos = torch.unique(cols, return_inverse=True)
    small = torch.zeros(r.numel(), c.numel())  # ΔC on its own rows x columns (|R|, |C|)
    small.index_put_((row_pos, col_pos), values.float(), accumulate=True)
    return _thin(p[:, r], q[:, c], small, d_out, d_in)


def _grid_layer(f: Any, keys: set[str], layer: str, spec: dict[str, Any]) -> LayerDelta | None:
    """A layer of a version-4 delta: ΔC on the group's (|R|, |C|) grid (csr / bitmap / block), trimmed to
    the rows and columns this layer uses."""
    d_out, d_in = spec["shape"]
    basis = spec["basis"]
    rows, cols = f.get_tensor(f"{basis}.rows").long(), f.get_tensor(f"{basis}.cols").long()
    parts = {part: f.get_tensor(f"{layer}.{part}") for part in LAYER_PARTS if f"{layer}.{part}" in keys}
    grid = decode(parts, rows.numel(), cols.numel(), spec["encoding"])
    r, c = grid.any(dim=1).nonzero().flatten(), grid.any(dim=0).nonzero().flatten()
    if r.numel() == 0:
        return None
    if f"{basis}.p" in keys:
        p_r, q_c = f.get_tensor(f"{basis}.p").float()[:, r], f.get_tensor(f"{basis}.q").float()[:, c]
    else:  # identity basis (MeProp)
        p_r, q_c = torch.eye(d_out)[:, rows[r]], torch.eye(d_in)[:, cols[c]]
    return _thin(p_r, q_c, grid[r][:, c], d_out, d_in)


def read_adapter(delta_dir: Path, name: str) -> Adapter:
    """An Adapter from a saved SparseGrad / MeProp delta folder (sparsegrad.save_delta's format, any
    version)."""
    config = read_delta_config(delta_dir)
    read = _coo_layer if int(config.get("version", 0)) < 4 else _grid_layer
    layers: dict[str, LayerDelta] = {}
    params: dict[str, torch.Tensor] = {}
    with safe_open(str(delta_files(delta_dir)[1]), framework="pt") as f:
        keys = set(f.keys())
        for layer, spec in config["layers"].items():
            if f"{layer}.weight_delta" in keys:
                layers[layer] = LayerDelta(dense=f.get_tensor(f"{layer}.weight_delta").float())
                continue
            delta = read(f, keys, layer, spec)
            if delta is not None:
                layers[layer] = delta
        for plain in config["dense_params"]:
            params[plain] = f.get_tensor(f"dense.{plain}")
    return Adapter(name, layers, params, config.get("labels"), config)


class _Override(nn.Module):
    """A parametrization: the active adapter's value of this parameter, else the base's own."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.param_name = name

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        adapter = _ACTIVE.get()
        if adapter is None:
            return original
        value = adapter.params.get(self.param_name)
        return original if value is None else value.to(original.dtype)


class SharedBase:
    """A base model that fine-tunes (Adapters) are applied to per call, never merged into."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._hooked: set[str] = set()
        self._overridden: set[str] = set()
        self._tied = _tied_names(model)

    def can_share(self, adapter: Adapter) -> str | None:
        """None when `adapter` can be served on this base, else why not (then serve a merged copy)."""
        params = dict(self.model.named_parameters())
        for plain in adapter.params:
            if plain in self._tied:
                return f"{plain!r} is tied to another weight"
            if plain not in params and plain not in self._overridden:
                return f"the base has no parameter {plain!r}"
        base_bytes = sum(p.numel() * p.element_size() for p in params.values())
        if adapter.nbytes * 2 > base_bytes:
            return "the delta is mostly dense"
        return None

    def attach(self, adapter: Adapter) -> None:
        """Install the hooks and parametrizations `adapter` needs (once per layer / parameter)."""
        check_base(self.model, adapter.meta, check_fingerprint=True)
        for layer in adapter.layers:
            if layer not in self._hooked:
                self.model.get_submodule(layer).register_forward_hook(_layer_hook(layer))
                self._hooked.add(layer)
        for plain in adapter.params:
            if plain not in self._overridden:
                owner, _, attr = plain.rpartition(".")
                module = self.model.get_submodule(owner) if owner else self.model
                parametrize.register_parametrization(module, attr, _Override(plain), unsafe=True)
                self._overridden.add(plain)


def _tied_names(model: nn.Module) -> set[str]:
    seen: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        seen.setdefault(id(p), []).append(name)
    return {n for names in seen.values() if len(names) > 1 for n in names}


def _layer_hook(layer: str) -> Any:
    def hook(_module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor | None:
        adapter = _ACTIVE.get()
        delta = adapter.layers.get(layer) if adapter is not None else None
        if delta is None:
            return None
        return out + delta.output(args[0]).to(out.dtype)

    return hook


@contextmanager
def activate(adapter: Adapter | None) -> Iterator[None]:
    """Run the shared base as `adapter`'s fine-tune (None: the base itself) within this context."""
    token = _ACTIVE.set(adapter)
    try:
        yield
    finally:
        _ACTIVE.reset(token)
