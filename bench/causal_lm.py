"""Causal-LM benchmark: SmolLM2-135M-Instruct fine-tuned on chitchat conversations, methods side by side.

SparseGrad (MLP up/down, and variants), LoRA on the same layers with a comparable parameter budget, and full
fine-tuning run through the same engine (`training.run_training`) on the same chat JSONL, for the same
optimizer steps. Each variant runs in its own process, so its peak memory is its own. Reported per variant:
validation loss (assistant tokens only) before and after, mean optimizer-step time (wall clock and this
process's CPU time, which is what to compare on a machine shared with other jobs), time before the first
step (model loading, SparseGrad's basis phase), peak resident memory, trainable parameters, delta size.

`python -m bench.causal_lm` (or `SGFT_BENCH=causal_lm make bench`) prints a Markdown table and writes
bench/out/causal_lm.json. Knobs (environment): SGFT_BENCH_CAUSAL_STEPS (default 30),
SGFT_BENCH_CAUSAL_VARIANTS (comma list or "all"; default: the
SparseGrad dynamic, fixed and 2k-block variants, lora, full),
SGFT_BENCH_CAUSAL_LR (learning rates per variant, "lora=5e-3,sparsegrad=2e-3"; defaults 1e-3 and full 5e-5),
SGFT_BENCH_CAUSAL_JOBS (variants run at a time, default 1), SGFT_DATA_DIR (models under
$SGFT_DATA_DIR/models), SGFT_PRECISION (as the service's: fp32 | bf16 | bf16-weights | auto).
`python -m bench.causal_lm --report` rebuilds the table and JSON from the last
run's result files. Cost: about 150 forward/backward passes of batch 2 x ~120 tokens in all (20 of them
the two SparseGrad variants' basis steps); about 15 minutes on an idle 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent / "out"
STEPS = int(os.environ.get("SGFT_BENCH_CAUSAL_STEPS", "30"))
N_TRAIN, N_VALID, DATA_SEED = 300, 16, 0
MAX_CHARS = 300  # whole user/assistant pairs beyond this are cut: ~100 tokens with the chat template
COMMON: dict[str, Any] = {
    "batch_size": 2,
    "max_seq_length": 256,
    "warmup_ratio": 0.1,
    "lr_scheduler": "linear",
    "weight_decay": 0.0,
}
# SmolLM2 has 30 blocks; the paper's LLaMA run also tried a subset of blocks (here every third, 10 blocks).
EVERY_THIRD = r"model\.layers\.(" + "|".join(str(i) for i in range(0, 30, 3)) + r")\.mlp\.(up|down)_proj"
# The top third (blocks 20-29): the backward pass stops at block 20, no gradient flows through the 20 below.
TOP_THIRD = r"model\.layers\.(" + "|".join(str(i) for i in range(20, 30)) + r")\.mlp\.(up|down)_proj"


@dataclass
class Variant:
    name: str
    method: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    note: str = ""


# support_block 100 = the whole layer at density 1%: unconfined (a causal-LM job's default is a 2k block,
# the "-block" rows)
SG = {"learning_rate": 1e-3, "density": 0.01, "basis_steps": 10, "support_block": 100}
LORA = {"learning_rate": 1e-3, "lora_rank": 4}
VARIANTS = [
    Variant("sparsegrad", "sparsegrad", SG, "MLP up+down, density 1%"),
    Variant("sparsegrad-fixed", "sparsegrad", {**SG, "support": "fixed"}, "MLP up+down, 1%, fixed support"),
    Variant(
        "sparsegrad-block", "sparsegrad", {**SG, "support_block": 2}, "MLP up+down, 1%, dynamic in a 2k block"
    ),
    Variant(
        "sparsegrad-fixed-block",
        "sparsegrad",
        {**SG, "support": "fixed", "support_block": 2},
        "MLP up+down, 1%, fixed in a 2k block",
    ),
    Variant("lora", "lora", LORA, "MLP up+down, rank 4"),
    Variant("full", "full", {"learning_rate": 5e-5}, "all weights"),
    # Opt-in (SGFT_BENCH_CAUSAL_VARIANTS): the paper's optional gate_proj, and a subset of blocks.
    Variant(
        "sparsegrad+gate", "sparsegrad", {**SG, "target_modules": "gate_proj,up_proj,down_proj"}, "MLP all 3"
    ),
    Variant("sparsegrad/3", "sparsegrad", {**SG, "target_modules": EVERY_THIRD}, "up+down, every 3rd block"),
    Variant(
        "sparsegrad-fixed-block/3",
        "sparsegrad",
        {**SG, "support": "fixed", "support_block": 2, "target_modules": EVERY_THIRD},
        "up+down, every 3rd block, fixed in a 2k block",
    ),
    Variant("sparsegrad-top", "sparsegrad", {**SG, "target_modules": TOP_THIRD}, "up+down, blocks 20-29"),
    Variant(
        "sparsegrad-fixed-top",
        "sparsegrad",
        {**SG, "support": "fixed", "target_modules": TOP_THIRD},
        "up+down, blocks 20-29, fixed support",
    ),
    Variant("lora-top", "lora", {**LORA, "target_modules": TOP_THIRD}, "rank 4, blocks 20-29"),
]
DEFAULT_VARIANTS = [
    "sparsegrad",
    "sparsegrad-fixed",
    "sparsegrad-block",
    "sparsegrad-fixed-block",
    "lora",
    "full",
]


def run_variant(
    variant: Variant, train: Path, valid: Path, work: Path, models_dir: Path, eval_at_start: bool
) -> dict[str, Any]:
    """Train one variant in this process and measure it; returns one row of the results table."""
    import torch

    from bench.step_time import dir_bytes
    from training import run_training
    from training.model_setup import SMOLLM2_NAME
    from training.spec import Hooks, JobSpec, StepInfo

    stamps: list[float] = []  # when each optimizer step ended (wall clock)
    cpu_stamps: list[float] = []  # the same moments in this process's CPU time (all threads)
    evals: dict[int, dict[str, float]] = {}

    def on_step(info: StepInfo) -> None:
        stamps.append(time.perf_counter())
        cpu_stamps.append(time.process_time())
        if info.step % 5 == 0:
            print(f"  [{variant.name}] step {info.step}/{info.total_steps} loss {info.loss:.3f}", flush=True)

    hooks = Hooks(
        on_step=on_step,
        on_eval=lambda step, metrics: evals.__setitem__(step, dict(metrics)),
        on_message=lambda text: print(f"  [{variant.name}] {text}", flush=True),
    )
    hp = {
        **COMMON,
        **variant.hyperparameters,
        "max_steps": STEPS,
        "eval_every": STEPS,  # one evaluation, after the last step (and one before, if asked)
        "checkpoint_every": STEPS,  # no checkpoint inside the timed steps
        "eval_at_start": eval_at_start,
    }
    spec = JobSpec(model=SMOLLM2_NAME, method=variant.method, task="causal_lm", hyperparameters=hp, seed=0)  # type: ignore[arg-type]
    started = time.perf_counter()
    precision = os.environ.get("SGFT_PRECISION", "auto")  # the service's setting, read the same way
    result = run_training(spec, train, valid, work, hooks=hooks, models_dir=models_dir, precision=precision)
    total = time.perf_counter() - started
    # Step time: between consecutive step ends, so loading, the basis phase and evaluations do not count.
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    step_s = sum(gaps) / len(gaps) if gaps else float("nan")
    # CPU seconds per step: on a machine shared with other jobs, wall time mostly measures their load.
    cpu_gaps = [b - a for a, b in zip(cpu_stamps, cpu_stamps[1:], strict=False)]
    row: dict[str, Any] = {
        "variant": variant.name,
        "method": variant.method,
        "note": variant.note,
        "hyperparameters": hp,
        "status": result.status,
        "steps": result.step,
        "trained_tokens": result.trained_tokens,
        "valid_loss_before": evals.get(0, {}).get("valid_loss"),
        "valid_loss_after": result.metrics.get("valid_loss"),
        "valid_token_accuracy_after": result.metrics.get("valid_token_accuracy"),
        "train_loss_last": result.metrics.get("train_loss"),
        "step_s": step_s,
        "step_s_median": sorted(gaps)[len(gaps) // 2] if gaps else None,
        "step_cpu_s": sum(cpu_gaps) / len(cpu_gaps) if cpu_gaps else None,
        # Loading, tokenising, SparseGrad's basis phase and the first step (minus a typical step):
        "setup_s": (stamps[0] - started) - step_s if stamps else None,
        "total_s": total,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        "trainable_params": int(result.metrics.get("trainable_parameters", 0)) or None,
        "delta_bytes": dir_bytes(result.delta_dir) if result.delta_dir else 0,
    }
    if torch.cuda.is_available():
        row["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def _prepare(work: Path) -> tuple[Path, Path, Path]:
    """SmolLM2 in the models folder and the chitchat JSONL in `work` (both reused when present)."""
    from training.chitchat import convert
    from training.model_setup import default_models_dir, setup_smollm2

    models_dir = default_models_dir().resolve()
    setup_smollm2(models_dir)
    train, valid = convert(work / "data", N_TRAIN, N_VALID, seed=DATA_SEED, min_turns=2, max_chars=MAX_CHARS)
    return models_dir, train, valid


def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the measured rows."""
    head = (
        "| variant | targets | valid loss before | after | step (s) | step CPU (s) | before 1st step (s) "
        "| peak RSS (MB) | trainable params | delta (MB) |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['variant']} | {r['note']} | {_fmt(r['valid_loss_before'], '.4f')} "
        f"| {_fmt(r['valid_loss_after'], '.4f')} "
        f"| {_fmt(r['step_s'], '.2f')} | {_fmt(r['step_cpu_s'], '.2f')} | {_fmt(r['setup_s'], '.1f')} "
        f"| {_fmt(r['peak_rss_mb'], '.0f')} "
        f"| {_fmt(r['trainable_params'], ',')} | {_fmt(r['delta_bytes'] / 1e6, '.2f')} |"
        for r in rows
    ]
    return head + "\n".join(lines)


def _selected() -> list[Variant]:
    raw = os.environ.get("SGFT_BENCH_CAUSAL_VARIANTS", "")
    wanted = [v.strip() for v in raw.split(",") if v.strip()] or DEFAULT_VARIANTS
    if wanted == ["all"]:
        wanted = [v.name for v in VARIANTS]
    unknown = set(wanted) - {v.name for v in VARIANTS}
    if unknown:
        raise SystemExit(
            f"unknown variant(s) {sorted(unknown)}; choose from {[v.name for v in VARIANTS]} or 'all'"
        )
    return [_with_rate(v) for v in VARIANTS if v.name in wanted]


def _with_rate(v: Variant) -> Variant:
    """SGFT_BENCH_CAUSAL_LR="lora=5e-3,sparsegrad=2e-3": learning-rate grid points (the name stays)."""
    from bench.quality import parse_overrides

    rates = parse_overrides("", os.environ.get("SGFT_BENCH_CAUSAL_LR", ""), names=[x.name for x in VARIANTS])
    return Variant(v.name, v.method, {**v.hyperparameters, **rates.get(v.name, {})}, v.note)


def _command(v: Variant, first: bool, work: Path, train: Path, valid: Path, models_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "bench.causal_lm", "--variant", v.name, "--train", str(train)]
    cmd += ["--valid", str(valid), "--work", str(work / "runs"), "--models-dir", str(models_dir)]
    # Every variant starts from the same base model on the same data: evaluate it once, in the first run.
    return [*cmd, "--result", str(_result_file(work, v)), "--eval-at-start", "1" if first else "0"]


def _result_file(work: Path, v: Variant) -> Path:
    return work / f"{v.name.replace('/', '_')}.json"


def main(report_only: bool = False) -> None:
    """Run every selected variant in its own process; print the table; write bench/out/causal_lm.json.

    SGFT_BENCH_CAUSAL_JOBS=N runs N variants at a time (default 1: one after the other, the fair setting for
    wall-clock step times). `report_only` rebuilds the table from the result files of an earlier run.
    """
    variants = _selected()
    work = OUT_DIR / "causal_lm_work"
    if not report_only:
        models_dir, train, valid = _prepare(work)
        jobs = max(1, int(os.environ.get("SGFT_BENCH_CAUSAL_JOBS", "1")))
        for start in range(0, len(variants), jobs):
            batch = variants[start : start + jobs]
            procs = [
                subprocess.Popen(_command(v, start + i == 0, work, train, valid, models_dir))
                for i, v in enumerate(batch)
            ]
            for v, proc in zip(batch, procs, strict=True):
                if proc.wait() != 0:
                    raise SystemExit(f"variant {v.name} failed (exit {proc.returncode})")
    rows = [json.loads(_result_file(work, v).read_text()) for v in variants]
    for row in rows[1:]:
        row["valid_loss_before"] = rows[0]["valid_loss_before"]
    print(table(rows))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    report = {
        "model": "SmolLM2-135M-Instruct",
        "data": {
            "source": "chitchat-dataset",
            "train_conversations": N_TRAIN,
            "valid_conversations": N_VALID,
            "seed": DATA_SEED,
            "max_chars": MAX_CHARS,
        },
        "steps": STEPS,
        "common_hyperparameters": COMMON,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch_threads": _threads()},
        "rows": rows,
    }
    (OUT_DIR / "causal_lm.json").write_text(json.dumps(report, indent=2) + "\n")


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    for flag in ("--variant", "--train", "--valid", "--work", "--models-dir", "--result", "--eval-at-start"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args(argv)
    variant = _with_rate(next(v for v in VARIANTS if v.name == args.variant))
    work = Path(args.work) / variant.name.replace("/", "_")
    shutil.rmtree(work, ignore_errors=True)  # a fresh run, never a leftover checkpoint or delta
    row = run_variant(
        variant, Path(args.train), Path(args.valid), work, Path(args.models_dir), args.eval_at_start == "1"
    )
    Path(args.result).write_text(json.dumps(row, indent=2, default=str) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["--report"]:
        main(report_only=True)
    elif len(sys.argv) > 1:
        _child(sys.argv[1:])
    else:
        main()
