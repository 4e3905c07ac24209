"""Several SparseGrad fine-tunes on one shared base model, without a copy of its weights each.

A fine-tune is an `Adapter`: per target layer the delta ΔW = P_R ΔC Q_Cᵀ kept factored as two thin
matrices (or dense where that is smaller), and the few dense parameters it trained (head, norms). The
service applies the active one's ΔW into the base's weights (training.serving.applied.AppliedBase, decode
at the base's speed). `SharedBase` here is the other strategy ("hook"): the base never changes, a forward
hook on each target layer adds x ΔWᵀ, and a parametrization on each trained dense parameter returns the
fine-tune's tensor, both for the adapter that is active in the current context (`activate`, a ContextVar:
two threads can serve two fine-tunes of one base at once), at the side path's cost on every token.

    x ΔWᵀ = (x Q_C)(P_R ΔC)ᵀ     x: (N, D_in);  Q_C: (D_in, |C|);  P_R ΔC: (D_out, |C|)      (|C| <= |R|)
          = (x Q_C ΔCᵀ) P_Rᵀ                   Q_C ΔCᵀ: (D_in, |R|);  P_R: (D_out, |R|)        (|R| < |C|)
          = ((x Q_g)[:, c] ΔCᵀ scattered to R_g) P_gᵀ   Q_g, P_g: the group's columns, held once

The last form keeps a basis group's columns once, as the delta file does, where the layers' own thin
factors would repeat them layer after layer (a group spans the blocks of a model). It costs per token a
product with the group's columns (D_in |C_g| + |R_g| D_out) instead of the layer's own, so `read_adapter`
keeps the own factors while they stay within HELD_PER_FILE_BYTE of the delta file.
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
class GroupBasis:
    """A basis group's stored columns, held once for all its layers: `p` (D_out, |R_g|), `q` (D_in, |C_g|)."""

    p: torch.Tensor
    q: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.p.numel() * self.p.element_size() + self.q.numel() * self.q.element_size()


@dataclass
class LayerDelta:
    """x ΔWᵀ for one layer, in one of three forms: `left` (D_out, r) and `right` (D_in, r) of its own; or
    `dense` (D_out, D_in); or on its group's shared `basis`: ΔC as `small` (|rows|, |cols|), `rows` / `cols`
    its positions among the basis columns (None: all of them)."""

    left: torch.Tensor | None = None
    right: torch.Tensor | None = None
    dense: torch.Tensor | None = None
    basis: GroupBasis | None = None
    small: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    cols: torch.Tensor | None = None

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """x ΔWᵀ for x (..., D_in), in x's dtype."""
        if self.dense is not None:
            return x @ self.dense.t().to(x.dtype)  # (..., D_out)
        if self.basis is not None:
            assert self.small is not None
            z = x @ self.basis.q.to(x.dtype)  # (..., |C_g|)
            if self.cols is not None:
                z = z.index_select(-1, self.cols)  # (..., |cols|): a gather of activations, not weights
            y = z @ self.small.t().to(x.dtype)  # (..., |rows|)
            if self.rows is not None:
                full = y.new_zeros(*y.shape[:-1], self.basis.p.shape[1])  # (..., |R_g|)
                y = full.index_copy_(-1, self.rows, y)
            return y @ self.basis.p.t().to(x.dtype)  # (..., D_out)
        assert self.left is not None and self.right is not None
        return (x @ self.right.to(x.dtype)) @ self.left.t().to(x.dtype)  # (..., r) -> (..., D_out)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b), float32, with ΔW = a @ b (D_out, D_in): the held form's product taken in the cheaper
        order, so that a @ b costs about D_out D_in rank (for adding ΔW into a base weight)."""
        if self.dense is not None:
            return self.dense.float(), torch.eye(self.dense.shape[1])
        if self.basis is not None:
            assert self.small is not None
            p = self.basis.p if self.rows is None else self.basis.p.index_select(1, self.rows)  # (D_out, r)
            q = self.basis.q if self.cols is None else self.basis.q.index_select(1, self.cols)  # (D_in, c)
            (r, c), d_out, d_in = self.small.shape, p.shape[0], q.shape[0]
            if d_out * r * c + d_out * c * d_in <= r * c * d_in + d_out * r * d_in:
                return p @ self.small.float(), q.t()  # (D_out, c), (c, D_in)
            return p, self.small.float() @ q.t()  # (D_out, r), (r, D_in)
        assert self.left is not None and self.right is not None
        return self.left.float(), self.right.float().t()

    def weight(self) -> torch.Tensor:
        """ΔW itself (D_out, D_in), float32."""
        if self.dense is not None:
            return self.dense.float()
        a, b = self.factors()
        return a @ b

    @property
    def nbytes(self) -> int:
        """This layer's own bytes (a shared basis is counted once, by the Adapter)."""
        own = (self.left, self.right, self.dense, self.small, self.rows, self.cols)
        return sum(t.numel() * t.element_size() for t in own if t is not None)


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
        bases = {id(d.basis): d.basis.nbytes for d in self.layers.values() if d.basis is not None}
        return dense + sum(d.nbytes for d in self.layers.values()) + sum(bases.values())


@dataclass
class _Entries:
    """One layer's ΔC on the rows `r` and columns `c` it uses: positions among its group's stored basis
    columns (rotated), or plain row / column ids (identity basis)."""

    r: torch.Tensor
    c: torch.Tensor
    small: torch.Tensor  # (|r|, |c|)
    d_out: int
    d_in: int


def _thin(p_r: torch.Tensor, q_c: torch.Tensor, small: torch.Tensor, d_out: int, d_in: int) -> LayerDelta:
    """ΔW = p_r small q_cᵀ kept as its thinner factorisation (rank min(|R|, |C|)), or dense where the
    factors would not be smaller than ΔW itself."""
    rank = min(small.shape)
    if (d_out + d_in) * rank >= d_out * d_in:
        return LayerDelta(dense=(p_r @ small @ q_c.t()).contiguous())
    if small.shape[1] <= small.shape[0]:
        return LayerDelta(left=(p_r @ small).contiguous(), right=q_c.contiguous())
    return LayerDelta(left=p_r.contiguous(), right=(q_c @ small.t()).contiguous())


def _on_basis(basis: GroupBasis, e: _Entries) -> LayerDelta:
    rows = None if e.r.numel() == basis.p.shape[1] else e.r  # all of the group's rows: no scatter
    cols = None if e.c.numel() == basis.q.shape[1] else e.c
    return LayerDelta(basis=basis, small=e.small.contiguous(), rows=rows, cols=cols)


def _coo_layer(f: Any, keys: set[str], layer: str, spec: dict[str, Any]) -> _Entries | None:
    """A layer of a version 1-3 delta: COO (global row, col) entries, the group's used basis columns."""
    d_out, d_in = spec["shape"]
    idx = f.get_tensor(f"{layer}.indices").long()
    values = f.get_tensor(f"{layer}.values")
    if values.numel() == 0:
        return None
    basis = spec["basis"]
    rows, cols = idx[0], idx[1]
    if f"{basis}.p" in keys:  # positions among the group's stored basis columns
        rows = torch.searchsorted(f.get_tensor(f"{basis}.p_cols").long(), rows)
        cols = torch.searchsorted(f.get_tensor(f"{basis}.q_cols").long(), cols)
    r, row_pos = torch.unique(rows, return_inverse=True)
    c, col_pos = torch.unique(cols, return_inverse=True)
    small = torch.zeros(r.numel(), c.numel())  # ΔC on its own rows x columns (|R|, |C|)
    small.index_put_((row_pos, col_pos), values.float(), accumulate=True)
    return _Entries(r, c, small, d_out, d_in)


def _grid_layer(f: Any, keys: set[str], layer: str, spec: dict[str, Any]) -> _Entries | None:
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
    small = grid[r][:, c].float()
    if f"{basis}.p" in keys:
        return _Entries(r, c, small, d_out, d_in)
    return _Entries(rows[r], cols[c], small, d_out, d_in)  # identity basis (MeProp): plain ids


# `auto`: the most bytes an adapter may hold per byte of its delta file before layers move to their group's
# shared basis. Each layer's own thin factors are the faster path (decode on a SmolLM2-shaped model: about
# 30 against 27 tokens/s, docs/benchmarks.md); the shared basis holds far less.
HELD_PER_FILE_BYTE = 1.5


def _choose(own: dict[str, LayerDelta], shared: dict[str, LayerDelta], limit: int) -> dict[str, LayerDelta]:
    """Own factors while the layers hold at most `limit` bytes; past it, the layers that save the most move
    to their group's shared basis (a basis counted once, when its first layer moves)."""
    chosen = dict(own)
    held = sum(d.nbytes for d in own.values())
    bases: set[int] = set()
    for name in sorted(own, key=lambda n: shared[n].nbytes - own[n].nbytes):
        basis = shared[name].basis
        if held <= limit or basis is None or shared[name].nbytes >= own[name].nbytes:
            break
        held += shared[name].nbytes - own[name].nbytes + (0 if id(basis) in bases else basis.nbytes)
        bases.add(id(basis))
        chosen[name] = shared[name]
    return chosen


def read_adapter(delta_dir: Path, name: str, form: str = "auto") -> Adapter:
    """An Adapter from a saved SparseGrad / MeProp delta folder (sparsegrad.save_delta's format, any
    version).

    `form` of the rotated groups' layers: "own" (each layer's thin factors or dense ΔW: the fastest),
    "shared" (every layer on its group's basis columns held once: the fewest bytes) or "auto" (own factors
    within HELD_PER_FILE_BYTE bytes per byte of the delta file, else the layers that save most shared)."""
    if form not in ("auto", "own", "shared"):
        raise ValueError(f"form must be 'auto', 'own' or 'shared', got {form!r}")
    config = read_delta_config(delta_dir)
    read = _coo_layer if int(config.get("version", 0)) < 4 else _grid_layer
    weights = delta_files(delta_dir)[1]
    layers: dict[str, LayerDelta] = {}
    params: dict[str, torch.Tensor] = {}
    groups: dict[str, dict[str, _Entries]] = {}
    with safe_open(str(weights), framework="pt") as f:
        keys = set(f.keys())
        for layer, spec in config["layers"].items():
            if f"{layer}.weight_delta" in keys:
                layers[layer] = LayerDelta(dense=f.get_tensor(f"{layer}.weight_delta").float())
                continue
            e = read(f, keys, layer, spec)
            if e is None:
                continue
            if f"{spec['basis']}.p" in keys:
                groups.setdefault(spec["basis"], {})[layer] = e
            else:
                eye_r, eye_c = torch.eye(e.d_out)[:, e.r], torch.eye(e.d_in)[:, e.c]
                layers[layer] = _thin(eye_r, eye_c, e.small, e.d_out, e.d_in)
        for plain in config["dense_params"]:
            params[plain] = f.get_tensor(f"dense.{plain}")
        own: dict[str, LayerDelta] = {}
        shared: dict[str, LayerDelta] = {}
        for basis, members in groups.items():
            p, q = f.get_tensor(f"{basis}.p").float(), f.get_tensor(f"{basis}.q").float()
            group_basis = GroupBasis(p.contiguous(), q.contiguous())
            for layer, e in members.items():
                shared[layer] = _on_basis(group_basis, e)
                if form != "shared":
                    own[layer] = _thin(p[:, e.r], q[:, e.c], e.small, e.d_out, e.d_in)
    if form == "auto":
        rest = sum(d.nbytes for d in layers.values()) + sum(
            t.numel() * t.element_size() for t in params.values()
        )
        layers.update(_choose(own, shared, int(HELD_PER_FILE_BYTE * weights.stat().st_size) - rest))
    else:
        layers.update(shared if form == "shared" else own)
    layers = {name: layers[name] for name in config["layers"] if name in layers}  # the config's order
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
    """A base model that fine-tunes (Adapters) are applied to per call through hooks, never merged into
    (the "hook" strategy; training.serving.applied.AppliedBase adds the active ΔW into the weights)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._hooked: set[str] = set()
        self._overridden: set[str] = set()
        self._tied = _tied_names(model)

    @property
    def extra_bytes(self) -> int:
        """Bytes held for this base beyond its weights, whatever number of fine-tunes it serves."""
        return 0

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

    @contextmanager
    def use(self, adapter: Adapter | None) -> Iterator[None]:
        """Run the base as `adapter`'s fine-tune (None: the base itself) within this context."""
        with activate(adapter):
            yield


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
