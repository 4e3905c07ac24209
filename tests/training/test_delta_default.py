"""A classification job in an 8k support block writes its sparse delta in the small form; the default job
(no block for classification) and the delta_dtype setting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from training import Hooks, JobSpec, TrainResult, run_training
from training.hparams import SMALL_DELTA_BLOCK
from training.loop import CHECKPOINT_DELTA

# Only what a tiny run needs; support_block, selection, density, encoding: the service's defaults.
HYPER = {"n_epochs": 2, "batch_size": 8, "max_seq_length": 32, "basis_steps": 2, "learning_rate": 1e-3}


def _train(tmp: Path, data: tuple[Path, Path], models_dir: Path, **extra: Any) -> TrainResult:
    spec = JobSpec(model="tiny-bert", method="sparsegrad", hyperparameters={**HYPER, **extra}, seed=0)
    result = run_training(spec, data[0], data[1], tmp, models_dir=models_dir)
    assert result.status == "completed" and result.delta_dir is not None
    return result


def _mlp_bytes(delta_dir: Path) -> tuple[int, int, dict[str, Any]]:
    """(bytes of the MLP layers' tensors in the file: ΔC forms and basis columns, bytes of their dense
    float32 ΔW, the delta's JSON config)."""
    config = json.loads((delta_dir / "sparsegrad_delta.json").read_text())
    with safe_open(str(delta_dir / "sparsegrad_delta.safetensors"), framework="pt") as f:
        stored = sum(
            f.get_tensor(k).numel() * f.get_tensor(k).element_size()
            for k in f.keys()  # noqa: SIM118 (safe_open has no __iter__)
            if not k.startswith("dense.")
        )
    dense = sum(4 * s["shape"][0] * s["shape"][1] for s in config["layers"].values())
    return stored, dense, config


def test_8k_block_delta_is_small_beside_the_unconfined_default(
    tmp_path: Path, sst2: tuple[Path, Path], models_dir: Path
) -> None:
    """Every MLP layer stored sparse, its union inside the 8k block, over fewer basis rows and columns than
    the layer has; the file's MLP part a fraction of the dense ΔW and of the default (unconfined) job's."""
    small = _train(tmp_path / "block8", sst2, models_dir, support_block=SMALL_DELTA_BLOCK)
    assert small.delta_dir is not None
    stored, dense, config = _mlp_bytes(small.delta_dir)
    assert config["config"]["support_block"] == SMALL_DELTA_BLOCK == 8.0
    assert config["value_dtype"] == "float32"
    with safe_open(str(small.delta_dir / "sparsegrad_delta.safetensors"), framework="pt") as f:
        for spec in config["layers"].values():
            d_out, d_in = spec["shape"]
            assert spec["encoding"] in ("csr", "bitmap", "block")  # never the dense ΔW
            assert 0 < spec["nnz"] <= SMALL_DELTA_BLOCK * spec["k"]
            rows = f.get_slice(f"{spec['basis']}.rows").get_shape()[0]
            cols = f.get_slice(f"{spec['basis']}.cols").get_shape()[0]
            assert rows * cols < d_out * d_in  # the block references part of the basis grid
    assert stored < 0.5 * dense

    unconfined = _train(tmp_path / "default", sst2, models_dir)  # classification's default: no block
    assert unconfined.delta_dir is not None
    stored_u, dense_u, config_u = _mlp_bytes(unconfined.delta_dir)
    assert config_u["config"]["support_block"] is None and dense_u == dense
    assert stored < stored_u / 2


def test_delta_dtype_bfloat16_writes_half_the_values(
    tmp_path: Path, sst2: tuple[Path, Path], models_dir: Path
) -> None:
    """delta_dtype "bfloat16": the file's floating tensors are bf16 (the same entries as float32, each half
    the bytes), and a checkpoint event's delta_bytes counts the checkpoint's delta so."""
    events: list[tuple[Path, dict[str, float]]] = []
    spec = JobSpec(
        model="tiny-bert",
        method="sparsegrad",
        hyperparameters={**HYPER, "delta_dtype": "bfloat16", "checkpoint_every": 8},
        seed=0,
    )
    hooks = Hooks(on_checkpoint=lambda step, folder, metrics: events.append((folder, dict(metrics))))
    low = run_training(spec, sst2[0], sst2[1], tmp_path / "bf16", hooks=hooks, models_dir=models_dir)
    high = _train(tmp_path / "f32", sst2, models_dir)
    assert low.delta_dir is not None and high.delta_dir is not None
    stored_low, _, config_low = _mlp_bytes(low.delta_dir)
    stored_high, _, config_high = _mlp_bytes(high.delta_dir)
    assert config_low["value_dtype"] == "bfloat16"
    assert [s["nnz"] for s in config_low["layers"].values()] == [
        s["nnz"] for s in config_high["layers"].values()
    ]
    with safe_open(str(low.delta_dir / "sparsegrad_delta.safetensors"), framework="pt") as f:
        floats = [f.get_tensor(k) for k in f.keys() if not k.startswith("dense.")]  # noqa: SIM118
    assert {t.dtype for t in floats if t.is_floating_point()} == {torch.bfloat16}
    assert stored_low < 0.75 * stored_high  # indices stay int: less than half off, more than a quarter
    folder, metrics = events[-1]
    tensors = load_file(str(folder / CHECKPOINT_DELTA / "sparsegrad_delta.safetensors"))
    assert metrics["delta_bytes"] == sum(t.numel() * t.element_size() for t in tensors.values())
