"""The sparse delta artifact: adapter_config.json + adapter_model.safetensors, and merging it into a base."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from sparsegrad.function import apply_sparse_update
from sparsegrad.memory import delta_coo_bytes, delta_dense_bytes
from sparsegrad.model import FINGERPRINT_KIND, get_info, sparse_layers, weight_fingerprint
from sparsegrad.targets import is_linear_like, linear_weight, module_weight

FORMAT = "sparsegrad"
VERSION = 3  # 2: a layer may be stored as a dense weight_delta; 3: fingerprints of bf16-rounded values
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


class DeltaMismatch(ValueError):
    """The delta does not fit this base model (names the layer)."""


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _plain_name(param_name: str) -> str:
    """Injected-model parameter name -> plain-model name ('...dense.base_layer.bias' -> '...dense.bias')."""
    return param_name.replace(".base_layer.", ".")


def save_delta(model: nn.Module, out_dir: str | Path, encoding: str = "auto") -> Path:
    """Write the delta of an injected model to `out_dir` (created) and return it.

    Per target layer: int32 COO (row, col) of ΔC and its values; per basis group only the columns of P and Q
    that some layer's entries reference (stored once per group). A group whose COO entries (12 bytes each)
    and basis columns would outweigh its dense ΔW = P ΔC Qᵀ (a long dynamic run touches a large share of the
    coefficients) is stored as ΔW instead; `encoding` "coo" or "dense" forces one form for every group.
    Plus every trained dense parameter (head, norms, biases) in full, and a config naming the base model,
    its target-weight fingerprints and labels.
    """
    if encoding not in ("auto", "coo", "dense"):
        raise ValueError(f"encoding must be 'auto', 'coo' or 'dense', got {encoding!r}")
    info = get_info(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    layers = sparse_layers(model)
    groups: dict[str, list[str]] = {}  # layers sharing one P/Q pair share their stored basis columns
    for name, layer in layers.items():
        groups.setdefault(f"{layer.group}@{id(layer.P)}", []).append(name)
    basis_of: dict[str, str | None] = {}
    for i, names in enumerate(groups.values()):
        members = [layers[n] for n in names]
        first, short = members[0], f"basis{i}"
        deltas = [m.delta() for m in members]  # (sorted flat indices, values) of ΔC
        idx = [ix.cpu() for ix, _ in deltas]
        rows = [ix // m.d_in for ix, m in zip(idx, members, strict=True)]
        cols = [ix % m.d_in for ix, m in zip(idx, members, strict=True)]
        r, c = torch.unique(torch.cat(rows)), torch.unique(torch.cat(cols))
        rotated = first.P is not None and first.Q is not None
        nnz = sum(ix.numel() for ix in idx)
        coo_bytes = delta_coo_bytes(nnz, first.d_out, r.numel(), first.d_in, c.numel(), rotated)
        dense_smaller = coo_bytes > delta_dense_bytes((m.d_out, m.d_in) for m in members)
        if encoding == "dense" or (encoding == "auto" and dense_smaller):
            for n, m in zip(names, members, strict=True):
                tensors[f"{n}.weight_delta"] = m.get_delta_weight().float().cpu().contiguous()
                basis_of[n] = None
            continue
        for n, (_, values), rr, cc in zip(names, deltas, rows, cols, strict=True):
            tensors[f"{n}.indices"] = torch.stack([rr, cc]).to(torch.int32).contiguous()  # (2, nnz)
            tensors[f"{n}.values"] = values.detach().float().cpu().contiguous()
            basis_of[n] = short
        if rotated:
            assert first.P is not None and first.Q is not None
            tensors[f"{short}.p_cols"] = r.to(torch.int32)
            tensors[f"{short}.p"] = first.P.detach().float().cpu()[:, r].contiguous()  # (D_out, |R|)
            tensors[f"{short}.q_cols"] = c.to(torch.int32)
            tensors[f"{short}.q"] = first.Q.detach().float().cpu()[:, c].contiguous()  # (D_in, |C|)
    dense: list[str] = []
    placeholders = {id(m.coef) for m in layers.values()}
    for pname, p in model.named_parameters():
        if p.requires_grad and id(p) not in placeholders:
            plain = _plain_name(pname)
            dense.append(plain)
            tensors[f"dense.{plain}"] = p.detach().cpu().contiguous()
    config: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "method": info.method,
        "base_model_id": info.cfg.base_model_id,
        "base_fingerprint": info.fingerprint,
        "layer_fingerprints": info.layer_fingerprints,
        "fingerprint_kind": FINGERPRINT_KIND,
        "base_dtype": _dtype_name(next(iter(layers.values())).weight.dtype) if layers else None,
        "target_modules": [t.name for t in info.targets],
        "layers": {
            n: {
                "shape": [m.d_out, m.d_in],
                "k": m.k,
                "group": m.group,
                "basis": basis_of[n],
                "transposed": m.transposed,
            }
            for n, m in layers.items()
        },
        "density": info.cfg.density,
        "support": info.cfg.support,
        "task": info.task,
        "labels": info.cfg.labels,
        "head_modules": info.head_modules,
        "dense_params": dense,
        "config": info.cfg.to_dict(),
    }
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": FORMAT, "version": str(VERSION)})
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))
    return out


def read_delta_config(delta_dir: str | Path) -> dict[str, Any]:
    """adapter_config.json of a delta, checked for format and version."""
    path = Path(delta_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a sparsegrad delta folder")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{path}: format is {config.get('format')!r}, expected {FORMAT!r}")
    if int(config.get("version", 0)) > VERSION:
        raise ValueError(f"{path}: version {config.get('version')} is newer than this library ({VERSION})")
    return config


def check_base(model: nn.Module, config: dict[str, Any], check_fingerprint: bool = True) -> None:
    """Refuse a base model whose target layers are missing, differently shaped or differently weighted."""
    modules = dict(model.named_modules())
    for name, spec in config["layers"].items():
        m = modules.get(name)
        if m is None or not is_linear_like(m):
            raise DeltaMismatch(f"base model has no linear layer {name!r} that the delta targets")
        shape = list(linear_weight(m).shape)
        if shape != spec["shape"]:
            raise DeltaMismatch(
                f"layer {name!r}: base weight is {shape}, the delta was trained on {spec['shape']}"
            )
        kind = config.get("fingerprint_kind", "exact")
        weight = module_weight(m)
        if check_fingerprint and weight_fingerprint(weight, kind) != config["layer_fingerprints"][name]:
            was = config.get("base_dtype")
            dtype_note = (
                f"; the delta was made on {was} weights, these are {_dtype_name(weight.dtype)}"
                if was and was != _dtype_name(weight.dtype)
                else ""
            )
            compare = "values rounded to bf16" if kind == FINGERPRINT_KIND else "dtype and raw bytes"
            raise DeltaMismatch(
                f"layer {name!r}: base weights differ from the ones the delta was trained on "
                f"(sha256 of the {compare} mismatch{dtype_note}); "
                f"load the same base model ({config.get('base_model_id')!r})"
            )


def _add_rounded_once(w: torch.Tensor, dw: torch.Tensor) -> None:
    """w += dw, the sum taken in float32 (at least) and rounded once to w's dtype: a bf16 base gets
    round(W + ΔW), not round(W + round(ΔW)), the same as `merge` of the trained model."""
    dw = dw.to(w.device)
    w.copy_((w.to(torch.promote_types(w.dtype, dw.dtype)) + dw).to(w.dtype))


@torch.no_grad()
def load_delta(model: nn.Module, delta_dir: str | Path, check_fingerprint: bool = True) -> nn.Module:
    """Merge a saved delta into a fresh base `model` (in place) and return it: plain layers, no sparsegrad.

    W += P[:, rows] ΔC Q[:, cols]ᵀ per target layer; trained dense parameters are copied in. A base that does
    not match (missing layer, shape, or fingerprint) raises DeltaMismatch naming the layer.
    """
    config = read_delta_config(delta_dir)
    check_base(model, config, check_fingerprint)
    params = dict(model.named_parameters())
    with safe_open(str(Path(delta_dir) / WEIGHTS_NAME), framework="pt") as f:
        keys = set(f.keys())
        for name, spec in config["layers"].items():
            m = model.get_submodule(name)
            w = linear_weight(m)
            if f"{name}.weight_delta" in keys:  # stored dense (see save_delta)
                _add_rounded_once(w, f.get_tensor(f"{name}.weight_delta"))
                continue
            idx = f.get_tensor(f"{name}.indices").long()
            values = f.get_tensor(f"{name}.values")
            b = spec["basis"]
            p = q = None
            rows, cols = idx[0], idx[1]
            if f"{b}.p" in keys:
                # local positions of the rows/cols among the stored basis columns
                p, q = f.get_tensor(f"{b}.p"), f.get_tensor(f"{b}.q")
                rows = torch.searchsorted(f.get_tensor(f"{b}.p_cols").long(), rows)
                cols = torch.searchsorted(f.get_tensor(f"{b}.q_cols").long(), cols)
            if p is None or q is None:
                dw = torch.zeros(w.shape, dtype=torch.float32)
                apply_sparse_update(dw, rows, cols, values, None, None)
            else:
                small = torch.zeros(p.shape[1], q.shape[1])  # ΔC restricted to the used (|R|, |C|)
                small.index_put_((rows, cols), values, accumulate=True)
                dw = p @ small @ q.t()  # (D_out, D_in)
            _add_rounded_once(w, dw)
        for plain in config["dense_params"]:
            if plain not in params:
                raise DeltaMismatch(f"base model has no parameter {plain!r} that the delta trained")
            t = f.get_tensor(f"dense.{plain}")
            if tuple(t.shape) != tuple(params[plain].shape):
                raise DeltaMismatch(
                    f"parameter {plain!r}: base is {tuple(params[plain].shape)}, delta {tuple(t.shape)}"
                )
            params[plain].copy_(t.to(params[plain].dtype))
    labels = config.get("labels")
    cfg = getattr(model, "config", None)
    if labels and cfg is not None and hasattr(cfg, "id2label"):
        cfg.id2label = dict(enumerate(labels))
        cfg.label2id = {name: i for i, name in enumerate(labels)}
    return model
