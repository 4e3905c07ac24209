"""Causal-LM benchmark: SmolLM2-135M-Instruct fine-tuned on chitchat conversations, methods side by side.

SparseGrad (MLP up/down, and variants), LoRA on the same layers with a comparable parameter budget, and full
fine-tuning run through the same engine (`training.run_training`) on the same chat JSONL, for the same
optimizer steps. Each variant runs in its own process, so its peak memory is its own. Reported per variant:
validation loss (assistant tokens only) before and after, mean optimizer-step time, time before the first
step (model loading, SparseGrad's basis phase), peak resident memory, trainable parameters, delta size.

`python -m bench.causal_lm` (or `SGFT_BENCH=causal_lm make bench`) prints a Markdown table and writes
bench/out/causal_lm.json. Knobs (environment): SGFT_BENCH_CAUSAL_STEPS (default 30),
SGFT_BENCH_CAUSAL_VARIANTS (comma list, default all), SGFT_DATA_DIR (models under $SGFT_DATA_DIR/models).
Sized for a 2-core CPU: about 10-15 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent / "out"
STEPS = int(os.environ.get("SGFT_BENCH_CAUSAL_STEPS", "30"))
N_TRAIN, N_VALID, DATA_SEED = 300, 32, 0
MAX_CHARS = 600  # whole user/assistant pairs beyond this are cut: ~150-200 tokens with the chat template
COMMON: dict[str, Any] = {
    "batch_size": 2,
    "max_seq_length": 256,
    "warmup_ratio": 0.1,
    "lr_scheduler": "linear",
    "weight_decay": 0.0,
}
EVERY_THIRD = list(range(0, 30, 3))  # SmolLM2 has 30 blocks; the paper's LLaMA run used a subset


@dataclass
class Variant:
    name: str
    method: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    note: str = ""


VARIANTS = [
    Variant("sparsegrad", "sparsegrad", {"learning_rate": 2e-4, "density": 0.01, "basis_steps": 10}, "up+down"),
    Variant(
        "sparsegrad+gate",
        "sparsegrad",
        {"learning_rate": 2e-4, "density": 0.01, "basis_steps": 10, "target_modules": "gate_proj,up_proj,down_proj"},
        "gate+up+down",
    ),
    Variant(
        "sparsegrad/3",
        "sparsegrad",
        {"learning_rate": 2e-4, "density": 0.03, "basis_steps": 10, "layers": EVERY_THIRD},
        "up+down, every third block, density 3%",
    ),
    Variant("lora", "lora", {"learning_rate": 1e-3, "lora_rank": 4}, "up+down, rank 4"),
    Variant("full", "full", {"learning_rate": 5e-5}, "all weights"),
]


def _valid_loss(metrics: dict[str, float]) -> float | None:
    """The validation loss in an engine metrics dict, whatever its exact key."""
    for key in ("valid_loss", "eval_loss", "validation_loss", "val_loss"):
        if key in metrics:
            return float(metrics[key])
    return None


def _dir_bytes(path: Path | None) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path else 0


def run_variant(variant: Variant, train: Path, valid: Path, work: Path, models_dir: Path) -> dict[str, Any]:
    """Train one variant in this process and measure it; returns one row of the results table."""
    import torch

    from training import run_training
    from training.model_setup import SMOLLM2_NAME
    from training.spec import Hooks, JobSpec, StepInfo

    torch.manual_seed(0)
    stamps: list[tuple[int, float]] = []  # (optimizer step, time it ended)
    evals: dict[int, dict[str, float]] = {}
    hooks = Hooks(
        on_step=lambda info: stamps.append((info.step, time.perf_counter())),
        on_eval=lambda step, metrics: evals.__setitem__(step, dict(metrics)),
    )
    hp = {**COMMON, **variant.hyperparameters, "max_steps": STEPS, "eval_every": STEPS, "checkpoint_every": STEPS}
    spec = JobSpec(model=SMOLLM2_NAME, method=variant.method, task="causal_lm", hyperparameters=hp, seed=0)  # type: ignore[arg-type]
    started = time.perf_counter()
    result = run_training(spec, train, valid, work, hooks=hooks, models_dir=models_dir)
    total = time.perf_counter() - started
    # Step time: between consecutive step ends, so neither loading, the basis phase nor the final eval count.
    gaps = [b[1] - a[1] for a, b in zip(stamps, stamps[1:], strict=False)]
    step_s = sum(gaps) / len(gaps) if gaps else float("nan")
    first_step_end = stamps[0][1] - started if stamps else float("nan")
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    row: dict[str, Any] = {
        "variant": variant.name,
        "method": variant.method,
        "note": variant.note,
        "hyperparameters": hp,
        "status": result.status,
        "steps": result.step,
        "valid_loss_before": _valid_loss(evals.get(0, {})),
        "valid_loss_after": _valid_loss(result.metrics),
        "metrics": result.metrics,
        "step_s": step_s,
        "setup_s": first_step_end - step_s,
        "total_s": total,
        "peak_rss_mb": peak_rss_mb,
        "trainable_params": result.metrics.get("trainable_parameters"),
        "delta_bytes": _dir_bytes(result.delta_dir),
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
        "| variant | targets | valid loss before | after | step (s) | before 1st step (s) | peak RSS (MB) "
        "| trainable params | delta (MB) |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['variant']} | {r['note']} | {_fmt(r['valid_loss_before'], '.4f')} | {_fmt(r['valid_loss_after'], '.4f')} "
        f"| {_fmt(r['step_s'], '.2f')} | {_fmt(r['setup_s'], '.1f')} | {_fmt(r['peak_rss_mb'], '.0f')} "
        f"| {_fmt(r['trainable_params'], ',')} | {_fmt(r['delta_bytes'] / 1e6, '.2f')} |"
        for r in rows
    ]
    return head + "\n".join(lines)


def main() -> None:
    """Run every selected variant in its own process; print the table; write bench/out/causal_lm.json."""
    wanted = [v.strip() for v in os.environ.get("SGFT_BENCH_CAUSAL_VARIANTS", "").split(",") if v.strip()]
    variants = [v for v in VARIANTS if not wanted or v.name in wanted]
    unknown = set(wanted) - {v.name for v in VARIANTS}
    if unknown:
        raise SystemExit(f"unknown variant(s) {sorted(unknown)}; choose from {[v.name for v in VARIANTS]}")
    work = OUT_DIR / "causal_lm_work"
    models_dir, train, valid = _prepare(work)
    rows = []
    for v in variants:
        result_file = work / f"{v.name.replace('/', '_')}.json"
        cmd = [sys.executable, "-m", "bench.causal_lm", "--variant", v.name, "--train", str(train)]
        cmd += ["--valid", str(valid), "--work", str(work / "runs"), "--models-dir", str(models_dir)]
        subprocess.run([*cmd, "--result", str(result_file)], check=True)
        rows.append(json.loads(result_file.read_text()))
        print(f"{v.name}: done in {rows[-1]['total_s']:.0f} s", flush=True)
    print(table(rows))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    report = {
        "model": "SmolLM2-135M-Instruct",
        "data": {"source": "chitchat-dataset", "train": N_TRAIN, "valid": N_VALID, "seed": DATA_SEED},
        "steps": STEPS,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "rows": rows,
    }
    (OUT_DIR / "causal_lm.json").write_text(json.dumps(report, indent=2) + "\n")


def _child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    for flag in ("--variant", "--train", "--valid", "--work", "--models-dir", "--result"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args(argv)
    variant = next(v for v in VARIANTS if v.name == args.variant)
    work = Path(args.work) / variant.name.replace("/", "_")
    row = run_variant(variant, Path(args.train), Path(args.valid), work, Path(args.models_dir))
    Path(args.result).write_text(json.dumps(row, indent=2, default=str) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        _child(sys.argv[1:])
    else:
        main()
