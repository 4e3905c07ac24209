"""Self-describing checkpoints, no pickle: tensors in safetensors, everything else in JSON.

A checkpoint folder `step-N/` holds
- `trainable.safetensors`: what training changed (methods.trainable_state),
- `optimizer.safetensors` + `optimizer.json`: the optimizer state dict, tensors apart from the rest,
- `basis.safetensors` (sparsegrad): the HOSVD basis, so a resume skips the basis phase,
- `rng.safetensors` + `state.json`: torch (CPU, CUDA) RNG states; step, data position (epoch, index into
  the seeded permutation), Python and NumPy RNG states, history, early-stopping state, resolved
  hyper-parameters and what the run was (model, method, seed, data fingerprint) to refuse a mismatched resume,
- `best-delta/` (with a validation file and result_checkpoint "best"): the delta of the best step so far.
It is written to a hidden sibling folder and renamed into place, so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import sparsegrad as sg

FORMAT_VERSION = 1


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state dict -> (tensors keyed "state.<param id>.<key>", JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    on_device: list[str] = []  # tensors that lived on the accelerator (moved back there on load)
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{key}"] = value.detach().cpu().contiguous()
                if value.device.type != "cpu":
                    on_device.append(f"state.{pid}.{key}")
            else:
                plain.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "plain_state": plain, "on_device": on_device}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, entry in rest["plain_state"].items():
        state.setdefault(int(pid), {}).update(entry)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in rest["param_groups"]]
    return {"state": state, "param_groups": groups}


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON) capturing torch, CUDA, Python and NumPy random states."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    plain = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
    }
    return tensors, plain


def set_rng_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(
    folder: Path,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    basis: sg.Basis | None,
    state: dict[str, Any],
    best_delta: Path | None = None,
) -> Path:
    """Write a checkpoint folder atomically (hidden temp folder, then rename) and return it; `best_delta`
    (the delta of the run's best step so far, training.outcome) is carried in it as `best-delta/`."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable, str(tmp / "trainable.safetensors"))
    opt_tensors, opt_rest = _flatten_optimizer(optimizer.state_dict())
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "optimizer.json").write_text(json.dumps(opt_rest))
    if basis is not None:
        basis.save(tmp / "basis.safetensors")
    rng_tensors, rng_plain = rng_state()
    save_file(rng_tensors, str(tmp / "rng.safetensors"))
    body = {"format_version": FORMAT_VERSION, **state, "rng": rng_plain}
    (tmp / "state.json").write_text(json.dumps(body, indent=1))
    if best_delta is not None:
        shutil.copytree(best_delta, tmp / "best-delta")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def read_state(folder: Path) -> dict[str, Any]:
    """state.json of a checkpoint (ValueError when the folder is not a checkpoint)."""
    path = Path(folder) / "state.json"
    if not path.is_file():
        raise ValueError(f"{folder} is not a checkpoint folder (no state.json)")
    state: dict[str, Any] = json.loads(path.read_text())
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{folder}: checkpoint format {state.get('format_version')}, expected {FORMAT_VERSION}"
        )
    return state


def load_basis(folder: Path) -> sg.Basis | None:
    path = Path(folder) / "basis.safetensors"
    return sg.Basis.load(path) if path.is_file() else None


def load_trainable(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "trainable.safetensors"))


def load_optimizer(folder: Path, optimizer: torch.optim.Optimizer) -> None:
    tensors = load_file(str(Path(folder) / "optimizer.safetensors"))
    rest = json.loads((Path(folder) / "optimizer.json").read_text())
    device = next((p.device for g in optimizer.param_groups for p in g["params"]), torch.device("cpu"))
    moved = set(rest.get("on_device", []))
    tensors = {k: v.to(device) if k in moved else v for k, v in tensors.items()}
    optimizer.load_state_dict(_unflatten_optimizer(tensors, rest))


def restore_rng(folder: Path, state: dict[str, Any]) -> None:
    set_rng_state(load_file(str(Path(folder) / "rng.safetensors")), state["rng"])
