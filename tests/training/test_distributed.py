"""Two processes (torchrun, gloo) equal one process on the same global batch: a tiny LLaMA (dropout off) on
SST-2 sentences as prompt/completion pairs (loss normalised by learnt tokens), each method trained by one
`torchrun --nproc-per-node 2 -m training.launch` (all runs in one process group: one start) and by
`run_training` in this process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sparsegrad.basis import Basis
from sparsegrad.delta import LAYER_PARTS, delta_files, read_delta_config
from sparsegrad.delta_codec import decode
from tests.service.stack import free_port
from training import JobSpec, TrainResult, merge_delta, run_training
from training.launch import result_from_json, torchrun_command
from training.testing import make_tiny_model, sst2_lines

ROOT = Path(__file__).resolve().parents[2]
HYPER = {
    "n_epochs": 1,
    "batch_size": 8,
    "max_seq_length": 64,
    "basis_steps": 4,
    "learning_rate": 1e-3,
    "density": 0.02,
    "eval_at_start": False,
    "checkpoint_every": 7,  # the supports are read from step 7's checkpoint
}
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "sparsegrad-dynamic": ("sparsegrad", {"support": "dynamic"}),  # a causal LM's 2k block: sparse dL/dC
    "sparsegrad-dynamic-unconfined": ("sparsegrad", {"support": "dynamic", "support_block": 50}),
    "sparsegrad-fixed": ("sparsegrad", {"support": "fixed"}),
    "lora": ("lora", {}),
    "full": ("full", {}),
    "meprop": ("meprop", {}),
    # FSDP2: the frozen weights sharded (LoRA, SparseGrad: all but the target layers), full: everything
    "lora-fsdp": ("lora", {}),
    "full-fsdp": ("full", {}),
    "sparsegrad-dynamic-fsdp": ("sparsegrad", {"support": "dynamic"}),
}
Pair = tuple[TrainResult, TrainResult]


def prompt_completion(path: Path, n: int = 64) -> Path:
    rows = [json.loads(line) for line in sst2_lines("train", n)]
    path.write_text(
        "".join(
            json.dumps(
                {"prompt": " ".join(r["text"].split()[:20]), "completion": " yes" if r["label"] else " no"}
            )
            + "\n"
            for r in rows
        )
    )
    return path


def torchrun(run_files: list[Path], nproc: int = 2, timeout: float = 240) -> None:
    cmd = torchrun_command(sys.executable, "training.launch", run_files, nproc)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Pair]]:
    """name -> (models folder, (one process's result, two processes' result)); work folders <name>-1|2."""
    root = tmp_path_factory.mktemp("ddp")
    models = root / "models"
    make_tiny_model(models, "tiny-llama")
    train = prompt_completion(root / "train.jsonl")
    files = []
    for name, (method, extra) in CASES.items():
        config = {
            "spec": {
                "model": "tiny-llama",
                "method": method,
                "hyperparameters": {**HYPER, **extra},
                "seed": 3,
            },
            "train": str(train),
            "work_dir": str(root / f"{name}-2"),
            "models_dir": str(models),
            "result": str(root / f"{name}-2.json"),
            "sharding": "fsdp" if name.endswith("-fsdp") else "none",
        }
        files.append(root / f"{name}.json")
        files[-1].write_text(json.dumps(config))
    torchrun(files)
    out = {}
    for name, (method, extra) in CASES.items():
        spec = JobSpec(model="tiny-llama", method=method, hyperparameters={**HYPER, **extra}, seed=3)  # type: ignore[arg-type]
        one = run_training(spec, train, None, root / f"{name}-1", models_dir=models)
        two = result_from_json(json.loads((root / f"{name}-2.json").read_text())["result"])
        out[name] = (models, (one, two))
    return out


def losses(result: TrainResult) -> list[float]:
    return [row["train_loss"] for row in result.history if "train_loss" in row]


def delta_w(models: Path, result: TrainResult, out: Path) -> dict[str, torch.Tensor]:
    """Merged weights minus the base's, for every weight the delta changed."""
    assert result.delta_dir is not None
    merged = load_file(str(merge_delta("tiny-llama", result.delta_dir, out, models) / "model.safetensors"))
    base = load_file(str(models / "tiny-llama" / "model.safetensors"))
    return {k: merged[k] - base[k] for k in base if k in merged and not torch.equal(merged[k], base[k])}


def support(work: Path, at_end: bool) -> set[tuple[str, int]]:
    """Every (layer, flat index) coefficient ΔC holds at the step-7 checkpoint (the union of the supports
    chosen in steps 1-7), or `at_end` (FSDP keeps no checkpoints) in the final delta's COO form."""
    checkpoint = work / "checkpoints" / "step-7" / "trainable.safetensors"
    if not at_end:
        tensors = load_file(str(checkpoint))
        return {(k, int(i)) for k, t in tensors.items() if k.endswith(".delta_index") for i in t.tolist()}
    return delta_support(work / "delta")


def delta_support(delta: Path) -> set[tuple[str, int]]:
    """Every (layer, row * 10,000 + column) coefficient a saved delta holds (format 4, sparse forms)."""
    config = read_delta_config(delta)
    out: set[tuple[str, int]] = set()
    with safe_open(str(delta_files(delta)[1]), framework="pt") as f:
        keys = set(f.keys())
        for name, spec in config["layers"].items():
            assert f"{name}.weight_delta" not in keys, f"{name} was stored dense: no support to compare"
            rows, cols = f.get_tensor(f"{spec['basis']}.rows"), f.get_tensor(f"{spec['basis']}.cols")
            parts = {p: f.get_tensor(f"{name}.{p}") for p in LAYER_PARTS if f"{name}.{p}" in keys}
            grid = decode(parts, rows.numel(), cols.numel(), spec["encoding"])
            for i, j in grid.nonzero().tolist():
                out.add((name, int(rows[i]) * 10_000 + int(cols[j])))
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_equal_one_on_the_same_global_batch(
    name: str, runs: dict[str, tuple[Path, Pair]], tmp_path: Path
) -> None:
    models, (one, two) = runs[name]
    assert two.status == "completed" and two.step == one.step == 8
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == 8
    for x, y in zip(a, b, strict=True):
        assert abs(x - y) <= 1e-5 * abs(x), (a, b)
    dw1, dw2 = delta_w(models, one, tmp_path / "one"), delta_w(models, two, tmp_path / "two")
    assert dw1 and dw1.keys() == dw2.keys()
    diff = sum(float((dw1[k] - dw2[k]).norm() ** 2) for k in dw1) ** 0.5
    size = sum(float(dw1[k].norm() ** 2) for k in dw1) ** 0.5
    # the figures docs/distributed.md quotes (`pytest -rP` shows them)
    print(f"{name}: loss {max(abs(x - y) / abs(x) for x, y in zip(a, b, strict=True)):.1e}, ", end="")
    print(f"merged ΔW {diff / size:.1e} relative norm")
    assert size > 0 and diff <= 1e-4 * size, (diff, size)
    if name.startswith("sparsegrad"):
        at_end = name.endswith("-fsdp")
        s1, s2 = support(models.parent / f"{name}-1", at_end), support(models.parent / f"{name}-2", at_end)
        print(f"{name}: supports {len(s1 & s2)} shared of {len(s1 | s2)}")
        assert s1 and len(s1 & s2) >= 0.999 * len(s1 | s2), (len(s1), len(s2), len(s1 & s2))


@pytest.mark.parametrize("name", ["sparsegrad-dynamic-unconfined", "sparsegrad-fixed"])
def test_two_processes_build_the_one_process_basis(name: str, runs: dict[str, tuple[Path, Pair]]) -> None:
    """Every column of P and Q (the last ones, of the smallest eigenvalues, included) is the same direction
    on 1 and 2 processes: the Gram sums are added in float64, so their order does not move the basis.
    Float32 sums gave 1 - |cos| up to 3.6e-5 here. The columns are rounded to bf16 values (compute_basis),
    so a value within float32 rounding of a bf16 tie may land one bf16 step apart: directions are compared
    (not norms, which the rounding moves by ~2^-9), and the values may differ by one bf16 step."""
    models, _ = runs[name]
    one, two = (
        Basis.load(models.parent / f"{name}-{n}" / "checkpoints" / "step-7" / "basis.safetensors")
        for n in (1, 2)
    )
    assert one.p.keys() == two.p.keys() and one.q.keys() == two.q.keys()
    worst = 0.0
    for a, b in [(one.p[g], two.p[g]) for g in one.p] + [(one.q[g], two.q[g]) for g in one.q]:
        a, b = a.double(), b.double()
        cos = (a * b).sum(0).abs() / (a.norm(dim=0) * b.norm(dim=0))
        worst = max(worst, float((1 - cos).max()))
        step = a.abs() * 2.0**-7  # one bf16 step (8 significant bits) is at most this
        assert bool(((a - b).abs() <= step).all() or ((a + b).abs() <= step).all())
    print(f"{name}: basis columns, max 1 - |cos| {worst:.1e}")
    assert worst <= 1e-6


@pytest.mark.parametrize("name", ["sparsegrad-dynamic", "full"])
def test_a_checkpoint_of_two_processes_resumes_on_one(
    name: str, runs: dict[str, tuple[Path, Pair]], tmp_path: Path
) -> None:
    """Under DDP every rank holds the whole state, and a checkpoint counts examples of the global batch: the
    step-7 checkpoint of the 2-process run, resumed by one process, ends where the 1-process run ends."""
    models, (one, _) = runs[name]
    method, extra = CASES[name]
    spec = JobSpec(model="tiny-llama", method=method, hyperparameters={**HYPER, **extra}, seed=3)  # type: ignore[arg-type]
    checkpoint = models.parent / f"{name}-2" / "checkpoints" / "step-7"
    resumed = run_training(
        spec, models.parent / "train.jsonl", None, tmp_path / "run", resume_from=checkpoint, models_dir=models
    )
    a, b = losses(one), losses(resumed)
    assert resumed.step == 8 and len(b) == 8
    assert abs(a[-1] - b[-1]) <= 1e-5 * abs(a[-1]), (a, b)
    dw1, dw2 = delta_w(models, one, tmp_path / "one"), delta_w(models, resumed, tmp_path / "resumed")
    diff = sum(float((dw1[k] - dw2[k]).norm() ** 2) for k in dw1) ** 0.5
    assert diff <= 1e-4 * sum(float(dw1[k].norm() ** 2) for k in dw1) ** 0.5


@pytest.mark.slow  # opt in with SGFT_SLOW=1: two agents' c10d rendezvous take ~20 s here
def test_two_torchrun_agents_with_c10d_rendezvous_run_one_job(
    runs: dict[str, tuple[Path, Pair]], tmp_path: Path
) -> None:
    """Multi-node on one machine: two agents (--nnodes 2, one process each, c10d rendezvous on localhost)
    train one job; it equals the one-process run."""
    models, (one, _) = runs["sparsegrad-dynamic"]
    method, extra = CASES["sparsegrad-dynamic"]
    config = {
        "spec": {"model": "tiny-llama", "method": method, "hyperparameters": {**HYPER, **extra}, "seed": 3},
        "train": str(models.parent / "train.jsonl"),
        "work_dir": str(tmp_path / "run"),
        "models_dir": str(models),
        "result": str(tmp_path / "result.json"),
    }
    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps(config))
    endpoint = f"127.0.0.1:{free_port()}"
    agents = [
        subprocess.Popen(
            torchrun_command(sys.executable, "training.launch", [run_file], 1, 2, node, endpoint, "job-x"),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / f"node{node}.log").open("w"),
        )
        for node in (0, 1)
    ]
    try:
        codes = [a.wait(timeout=240) for a in agents]
    finally:
        for a in agents:
            a.kill()
    logs = "".join((tmp_path / f"node{n}.log").read_text()[-2000:] for n in (0, 1))
    assert codes == [0, 0], logs
    two = result_from_json(json.loads((tmp_path / "result.json").read_text())["result"])
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == 8
    for x, y in zip(a, b, strict=True):
        assert abs(x - y) <= 1e-5 * abs(x), (a, b)
