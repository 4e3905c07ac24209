"""A classification job's default delta (a 20k support block, bf16 values) is small beside an unconfined
float32 job's; the delta_dtype setting, and the model evaluated being the delta's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from training import Hooks, JobSpec, TrainResult, run_training
from training.hparams import TASK_SUPPORT_BLOCK
from training.loop import CHECKPOINT_DELTA

# Only what a tiny run needs; support_block, selection, density, encoding: the service's defaults.
HYPER = {"n_epochs": 2, "batch_size": 8, "max_seq_length": 32, "basis_steps": 2, "learning_rate": 1e-3}


EVERY_8 = {"eval_every": 8, "checkpoint_every": 8}  # 16 steps: the last checkpoint is step 8, evaluated


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


def test_default_delta_is_small_beside_an_unconfined_float32_one(
    tmp_path: Path, sst2: tuple[Path, Path], models_dir: Path
) -> None:
    """The default job: every MLP layer stored sparse in bf16, its union inside the 20k block, over fewer
    basis rows and columns than the layer has; the file's MLP part a fraction of the unconfined float32
    job's (support_block 100 x density 0.01: no block)."""
    small = _train(tmp_path / "default", sst2, models_dir)
    assert small.delta_dir is not None
    stored, dense, config = _mlp_bytes(small.delta_dir)
    assert config["config"]["support_block"] == TASK_SUPPORT_BLOCK == 20.0
    assert config["value_dtype"] == "bfloat16"
    with safe_open(str(small.delta_dir / "sparsegrad_delta.safetensors"), framework="pt") as f:
        for spec in config["layers"].values():
            d_out, d_in = spec["shape"]
            assert spec["encoding"] in ("csr", "bitmap", "block")  # never the dense ΔW
            assert 0 < spec["nnz"] <= TASK_SUPPORT_BLOCK * spec["k"]
            rows = f.get_slice(f"{spec['basis']}.rows").get_shape()[0]
            cols = f.get_slice(f"{spec['basis']}.cols").get_shape()[0]
            assert rows * cols < d_out * d_in  # the block references part of the basis grid

    unconfined = _train(tmp_path / "wide", sst2, models_dir, support_block=100, delta_dtype="float32")
    assert unconfined.delta_dir is not None
    stored_u, dense_u, config_u = _mlp_bytes(unconfined.delta_dir)
    assert config_u["config"]["support_block"] is None and dense_u == dense
    assert stored < 0.6 * stored_u  # MiniLM: 6.3 MB against 28.9 MB (docs/benchmarks.md)


def test_delta_dtype_bf16_default_halves_the_values_and_is_what_was_evaluated(
    tmp_path: Path, sst2: tuple[Path, Path], models_dir: Path
) -> None:
    """delta_dtype, bfloat16 by default: the file's ΔC values take 2 bytes each (float32: 4), the basis
    columns are bf16 in both (their values are bf16 numbers), a checkpoint event's delta_bytes counts the
    checkpoint's delta, and the model evaluated at the last step is the delta's: its ΔC (saved in the last
    checkpoint, float32) lies on the bf16 grid, where a float32 job's does not."""
    events: list[tuple[Path, dict[str, float]]] = []
    spec = JobSpec(model="tiny-bert", method="sparsegrad", hyperparameters={**HYPER, **EVERY_8}, seed=0)
    hooks = Hooks(on_checkpoint=lambda step, folder, metrics: events.append((folder, dict(metrics))))
    low = run_training(spec, sst2[0], sst2[1], tmp_path / "bf16", hooks=hooks, models_dir=models_dir)
    high = _train(tmp_path / "f32", sst2, models_dir, **EVERY_8, delta_dtype="float32")
    assert low.delta_dir is not None and high.delta_dir is not None

    def per_entry(delta_dir: Path) -> tuple[str, float, set[torch.dtype]]:
        _, _, config = _mlp_bytes(delta_dir)
        with safe_open(str(delta_dir / "sparsegrad_delta.safetensors"), framework="pt") as f:
            keys = [k for k in f.keys() if not k.startswith("dense.")]  # noqa: SIM118
            values = sum(f.get_tensor(k).nbytes for k in keys if k.endswith(".values"))
            basis = {f.get_tensor(k).dtype for k in keys if k.endswith((".p", ".q"))}
        nnz = sum(s["nnz"] for s in config["layers"].values() if s["encoding"] != "block")
        return config["value_dtype"], values / nnz, basis

    assert per_entry(low.delta_dir) == ("bfloat16", 2.0, {torch.bfloat16})
    assert per_entry(high.delta_dir) == ("float32", 4.0, {torch.bfloat16})
    folder, metrics = events[-1]
    tensors = load_file(str(folder / CHECKPOINT_DELTA / "sparsegrad_delta.safetensors"))
    assert metrics["delta_bytes"] == sum(t.numel() * t.element_size() for t in tensors.values())

    def on_bf16_grid(work: Path) -> bool:
        last = max((work / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        state = load_file(str(last / "trainable.safetensors"))
        values = [t for k, t in state.items() if k.endswith(".delta_value")]
        assert values and all(t.dtype == torch.float32 for t in values)
        return all(torch.equal(t, t.bfloat16().float()) for t in values)

    assert folder.name == "step-8" and low.step == 16  # step 8: evaluated, then checkpointed
    assert on_bf16_grid(tmp_path / "bf16") and not on_bf16_grid(tmp_path / "f32")
