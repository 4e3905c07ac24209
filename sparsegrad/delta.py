"""The sparse delta artifact (sparsegrad_delta.json + .safetensors) and merging it into a base model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from sparsegrad.delta_codec import decode, encode, smallest
from sparsegrad.function import apply_sparse_update
from sparsegrad.layer import SparseGradLinear
from sparsegrad.memory import delta_group_bytes
from sparsegrad.model import FINGERPRINT_KIND, get_info, sparse_layers, weight_fingerprint
from sparsegrad.targets import is_linear_like, linear_weight, module_weight

FORMAT = "sparsegrad"
# 2: a layer may be stored as a dense weight_delta; 3: fingerprints of bf16-rounded values; 4: own file names,
# per-group basis columns (`<basis>.rows/.cols/.p/.q`) and per-layer csr / bitmap / block forms
VERSION = 4
CONFIG_NAME = "sparsegrad_delta.json"
WEIGHTS_NAME = "sparsegrad_delta.safetensors"
# versions 1-3 borrowed peft's names without being a peft adapter; load_delta still reads them
LEGACY_CONFIG_NAME = "adapter_config.json"
LEGACY_WEIGHTS_NAME = "adapter_model.safetensors"
ENCODINGS = ("auto", "csr", "bitmap", "block", "dense")
LAYER_PARTS = ("row_ptr", "col", "values", "bitmap", "block")  # a layer's tensors: <layer name>.<part>
VALUE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class DeltaMismatch(ValueError):
    """The delta does not fit this base model (names the layer)."""


@dataclass(frozen=True)
class DeltaSize:
    """What `save_delta` would write: ΔC entries stored sparsely (a layer stored as dense ΔW counts its
    entries all the same), and the weights file's tensor bytes."""

    nnz: int
    bytes: int


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _plain_name(param_name: str) -> str:
    """Injected-model parameter name -> plain-model name ('...dense.base_layer.bias' -> '...dense.bias')."""
    return param_name.replace(".base_layer.", ".")


def basis_dtype(layer: SparseGradLinear, vdtype: torch.dtype) -> torch.dtype:
    """The dtype a group's basis columns are stored in: bfloat16 when every value of P and Q is one (bases
    from compute_basis are: sparsegrad.basis.BASIS_VALUES), exact in 2 bytes whatever `vdtype`; else `vdtype`
    (an older checkpoint's float32 basis)."""
    if layer.P is None or layer.Q is None:
        return vdtype
    exact = all(
        bool((c == c.to(torch.bfloat16).to(c.dtype)).all())
        for m in (layer.P, layer.Q)
        for c in m.split(1024, dim=1)  # bounded temporaries: a 7B layer's P is 11008 x 11008
    )
    return torch.bfloat16 if exact else vdtype


def _encode_group(
    short: str,
    names: list[str],
    members: list[SparseGradLinear],
    encoding: str,
    vdtype: torch.dtype,
    tensors: dict[str, torch.Tensor],
) -> dict[str, str]:
    """Write one basis group's tensors; returns each layer's form."""
    first = members[0]
    deltas = [m.delta() for m in members]  # (sorted flat indices, values) of ΔC
    idx = [ix.cpu() for ix, _ in deltas]
    rows = [ix // first.d_in for ix in idx]
    cols = [ix % first.d_in for ix in idx]
    r = torch.unique(torch.cat(rows)) if idx else torch.zeros(0, dtype=torch.int64)
    c = torch.unique(torch.cat(cols)) if idx else torch.zeros(0, dtype=torch.int64)
    rotated = first.P is not None and first.Q is not None
    vbytes, bdtype = vdtype.itemsize, basis_dtype(first, vdtype)
    form, _ = delta_group_bytes(
        first.d_out,
        first.d_in,
        [i.numel() for i in idx],
        r.numel(),
        c.numel(),
        rotated,
        vbytes,
        bdtype.itemsize,
    )
    if encoding == "dense" or (encoding == "auto" and form == "dense"):
        for n, m in zip(names, members, strict=True):
            tensors[f"{n}.weight_delta"] = m.get_delta_weight().cpu().to(vdtype).contiguous()
        return dict.fromkeys(names, "dense")
    tensors[f"{short}.rows"] = r.to(torch.int32)
    tensors[f"{short}.cols"] = c.to(torch.int32)
    if rotated:
        assert first.P is not None and first.Q is not None
        tensors[f"{short}.p"] = first.P.detach().cpu()[:, r].to(bdtype).contiguous()  # (D_out, |R|)
        tensors[f"{short}.q"] = first.Q.detach().cpu()[:, c].to(bdtype).contiguous()  # (D_in, |C|)
    forms = {}
    for n, (_, values), rr, cc in zip(names, deltas, rows, cols, strict=True):
        local = torch.searchsorted(r, rr) * c.numel() + torch.searchsorted(c, cc)  # sorted, as idx
        layer_form = encoding if encoding != "auto" else smallest(rr.numel(), r.numel(), c.numel(), vbytes)
        vals = values.detach().cpu().to(vdtype)
        for part, t in encode(local, vals, r.numel(), c.numel(), layer_form).items():
            tensors[f"{n}.{part}"] = t.contiguous()
        forms[n] = layer_form
    return forms


def _delta_tensors(
    model: nn.Module, encoding: str, value_dtype: str
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]], dict[str, str], list[str]]:
    """(tensors, per-layer specs, basis-group names, trained dense parameters) of a delta."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(map(repr, ENCODINGS))}, got {encoding!r}")
    if value_dtype not in VALUE_DTYPES:
        raise ValueError(f"value_dtype must be one of {sorted(VALUE_DTYPES)}, got {value_dtype!r}")
    vdtype = VALUE_DTYPES[value_dtype]
    tensors: dict[str, torch.Tensor] = {}
    layers = sparse_layers(model)
    groups: dict[str, list[str]] = {}  # layers sharing one P/Q pair share their stored basis columns
    for name, layer in layers.items():
        groups.setdefault(f"{layer.group}@{id(layer.P)}@{layer.d_out}x{layer.d_in}", []).append(name)
    specs: dict[str, dict[str, Any]] = {}
    for i, names in enumerate(groups.values()):
        members = [layers[n] for n in names]
        short = f"basis{i}"
        forms = _encode_group(short, names, members, encoding, vdtype, tensors)
        for n, m in zip(names, members, strict=True):
            specs[n] = {
                "shape": [m.d_out, m.d_in],
                "k": m.k,
                "group": m.group,
                "basis": None if forms[n] == "dense" else short,
                "encoding": forms[n],
                "nnz": int(m.delta()[0].numel()),
                "transposed": m.transposed,
            }
    dense: list[str] = []
    placeholders = {id(m.coef) for m in layers.values()}
    for pname, p in model.named_parameters():
        if p.requires_grad and id(p) not in placeholders:
            plain = _plain_name(pname)
            dense.append(plain)
            tensors[f"dense.{plain}"] = p.detach().cpu().contiguous()
    bases = {f"basis{i}": names[0] for i, names in enumerate(groups.values())}
    return tensors, specs, bases, dense


def delta_size(model: nn.Module, value_dtype: str = "float32") -> DeltaSize:
    """Entries and tensor bytes of the delta `save_delta(model, encoding="auto")` would write now (the file
    adds a small header), from the same size functions, without building the tensors (cheap enough for
    every checkpoint)."""
    if value_dtype not in VALUE_DTYPES:
        raise ValueError(f"value_dtype must be one of {sorted(VALUE_DTYPES)}, got {value_dtype!r}")
    vbytes = torch.finfo(VALUE_DTYPES[value_dtype]).bits // 8
    layers = sparse_layers(model)
    groups: dict[str, list[SparseGradLinear]] = {}
    for layer in layers.values():
        groups.setdefault(f"{layer.group}@{id(layer.P)}@{layer.d_out}x{layer.d_in}", []).append(layer)
    nnz = total = 0
    for members in groups.values():
        first = members[0]
        idx = [m.delta()[0] for m in members]
        flat = torch.cat(idx)
        n_rows = torch.unique(flat // first.d_in).numel() if flat.numel() else 0
        n_cols = torch.unique(flat % first.d_in).numel() if flat.numel() else 0
        rotated = first.P is not None and first.Q is not None
        sizes = [i.numel() for i in idx]
        bbytes = basis_dtype(first, VALUE_DTYPES[value_dtype]).itemsize
        total += delta_group_bytes(first.d_out, first.d_in, sizes, n_rows, n_cols, rotated, vbytes, bbytes)[1]
        nnz += sum(sizes)
    placeholders = {id(m.coef) for m in layers.values()}
    for p in model.parameters():
        if p.requires_grad and id(p) not in placeholders:
            total += p.numel() * p.element_size()
    return DeltaSize(nnz=nnz, bytes=total)


def save_delta(
    model: nn.Module, out_dir: str | Path, encoding: str = "auto", value_dtype: str = "float32"
) -> Path:
    """Write the delta of an injected model to `out_dir` (created) and return it: sparsegrad_delta.json +
    sparsegrad_delta.safetensors (docs/delta-format.md).

    Per basis group (layers sharing P and Q): the basis columns some layer's entries reference (rows R of
    P, columns C of Q, stored once per group), and per layer ΔC on the local |R| x |C| grid as "csr",
    "bitmap" or "block", whichever is smallest (`encoding="auto"`; a name forces that form). A group whose
    sparse form would outweigh its dense ΔW = P ΔC Qᵀ is stored as ΔW ("dense"; forced for every group by
    `encoding="dense"`). Every form is lossless: load_delta merges the same weights from each.
    `value_dtype` "float16" / "bfloat16" stores ΔC values, basis columns and ΔW in that precision (half the
    bytes, no longer exact: docs/delta-format.md gives the error measured). Plus every trained dense
    parameter (head, norms, biases) in full, and a config naming the base model, its target-weight
    fingerprints and labels.
    """
    info = get_info(model)
    tensors, specs, bases, dense = _delta_tensors(model, encoding, value_dtype)
    layers = sparse_layers(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "method": info.method,
        "base_model_id": info.cfg.base_model_id,
        "base_fingerprint": info.fingerprint,
        "layer_fingerprints": info.layer_fingerprints,
        "fingerprint_kind": FINGERPRINT_KIND,
        "base_dtype": _dtype_name(next(iter(layers.values())).weight.dtype) if layers else None,
        "value_dtype": value_dtype,
        "target_modules": [t.name for t in info.targets],
        "layers": specs,
        "bases": {short: {"rotated": layers[first].P is not None} for short, first in bases.items()},
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


def delta_files(delta_dir: str | Path) -> tuple[Path, Path]:
    """(config, weights) paths of a delta folder: this version's names, else those of versions 1-3."""
    folder = Path(delta_dir)
    if (folder / CONFIG_NAME).is_file():
        return folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if (folder / LEGACY_CONFIG_NAME).is_file():
        legacy = json.loads((folder / LEGACY_CONFIG_NAME).read_text())
        if legacy.get("format") == FORMAT:
            return folder / LEGACY_CONFIG_NAME, folder / LEGACY_WEIGHTS_NAME
    raise FileNotFoundError(f"{folder / CONFIG_NAME} not found: not a sparsegrad delta folder")


def read_delta_config(delta_dir: str | Path) -> dict[str, Any]:
    """The config of a delta (sparsegrad_delta.json, or adapter_config.json before version 4), checked for
    format and version."""
    path, _ = delta_files(delta_dir)
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


def _legacy_layer_delta(
    f: Any, keys: set[str], name: str, spec: dict[str, Any], shape: torch.Size
) -> torch.Tensor:
    """ΔW of a layer stored in the COO form of versions 1-3 (int32 global (row, col), values, the group's
    referenced basis columns under `<basis>.p_cols/.p/.q_cols/.q`)."""
    idx = f.get_tensor(f"{name}.indices").long()
    values = f.get_tensor(f"{name}.values")
    b = spec["basis"]
    rows, cols = idx[0], idx[1]
    if f"{b}.p" not in keys:
        dw = torch.zeros(shape, dtype=torch.float32)
        apply_sparse_update(dw, rows, cols, values, None, None)
        return dw
    # local positions of the rows/cols among the stored basis columns
    p, q = f.get_tensor(f"{b}.p"), f.get_tensor(f"{b}.q")
    rows = torch.searchsorted(f.get_tensor(f"{b}.p_cols").long(), rows)
    cols = torch.searchsorted(f.get_tensor(f"{b}.q_cols").long(), cols)
    small = torch.zeros(p.shape[1], q.shape[1])  # ΔC restricted to the used (|R|, |C|)
    small.index_put_((rows, cols), values, accumulate=True)
    return p @ small @ q.t()  # type: ignore[no-any-return]


def _layer_delta(f: Any, keys: set[str], name: str, spec: dict[str, Any], shape: torch.Size) -> torch.Tensor:
    """ΔW (float32, (D_out, D_in)) of a layer of a version-4 delta."""
    form, b = spec["encoding"], spec["basis"]
    rows, cols = f.get_tensor(f"{b}.rows").long(), f.get_tensor(f"{b}.cols").long()
    parts = {part: f.get_tensor(f"{name}.{part}") for part in LAYER_PARTS if f"{name}.{part}" in keys}
    small = decode(parts, rows.numel(), cols.numel(), form)  # ΔC on the group's (|R|, |C|) grid
    if f"{b}.p" not in keys:  # identity basis (MeProp): the grid sits at those rows and columns of ΔW
        dw = torch.zeros(shape, dtype=torch.float32)
        dw[rows.unsqueeze(1), cols] = small
        return dw
    p, q = f.get_tensor(f"{b}.p").float(), f.get_tensor(f"{b}.q").float()
    return p @ small @ q.t()  # type: ignore[no-any-return]


@torch.no_grad()
def load_delta(model: nn.Module, delta_dir: str | Path, check_fingerprint: bool = True) -> nn.Module:
    """Merge a saved delta into a fresh base `model` (in place) and return it: plain layers, no sparsegrad.

    W += P[:, R] ΔC Q[:, C]ᵀ per target layer (or its stored ΔW), the sum taken in float32 and rounded once to
    W's dtype; trained dense parameters are copied in. Reads every format version (1-3: adapter_config.json +
    adapter_model.safetensors, COO). A base that does not match (missing layer, shape, or fingerprint) raises
    DeltaMismatch naming the layer.
    """
    config = read_delta_config(delta_dir)
    check_base(model, config, check_fingerprint)
    params = dict(model.named_parameters())
    _, weights = delta_files(delta_dir)
    legacy = int(config.get("version", 0)) < 4
    with safe_open(str(weights), framework="pt") as f:
        keys = set(f.keys())
        for name, spec in config["layers"].items():
            w = linear_weight(model.get_submodule(name))
            if f"{name}.weight_delta" in keys:  # stored dense (see save_delta)
                _add_rounded_once(w, f.get_tensor(f"{name}.weight_delta").float())
                continue
            read = _legacy_layer_delta if legacy else _layer_delta
            _add_rounded_once(w, read(f, keys, name, spec, w.shape))
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
