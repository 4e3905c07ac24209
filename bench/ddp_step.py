"""Step time of one job on 1 and on N processes (torchrun; gloo on CPU, nccl on CUDA), same global batch.

Each process count runs `torchrun --nproc-per-node N -m bench.ddp_step --rank run.json`: the engine's own
loop (training.launch, training.distributed), rank 0 timing every optimizer step through its `on_step` hook.
Reported: the median step time after the first `--warmup` steps, the losses (1 and N processes must agree:
the run fails when the curves differ by more than `--loss-tolerance`, 1e-4 relative by default, so the check
holds on a GPU machine too; dropout, as in all-MiniLM-L6-v2, makes them differ)
and the threads per process (on CPU the cores are shared: N processes get cores/N threads each).

    python -m bench.ddp_step                                   # tiny LLaMA, 1 vs 2 processes, CPU
    python -m bench.ddp_step --model all-MiniLM-L6-v2 --batch 16 --seq 128 --steps 8 --loss-tolerance inf
    python -m bench.ddp_step --nproc 1,8 --device cuda         # a machine with 8 GPUs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _rank_main(run_file: Path) -> int:
    from training.launch import run_files
    from training.spec import Hooks, StepInfo

    config = json.loads(run_file.read_text())
    times: list[float] = []
    losses: list[float] = []
    last = [time.perf_counter()]

    def on_step(info: StepInfo) -> None:
        now = time.perf_counter()
        times.append(now - last[0])
        losses.append(info.loss)
        last[0] = now

    def on_message(message: str) -> None:
        if message.startswith("Training "):  # the last message before the first step
            last[0] = time.perf_counter()

    status = run_files([run_file], lambda _: Hooks(on_step=on_step, on_message=on_message))
    if times:
        Path(config["timings"]).write_text(json.dumps({"step_s": times, "losses": losses}))
    return status


def _data(folder: Path, model: str, n: int) -> tuple[Path, str]:
    from training.testing import make_tiny_model, sst2_lines

    lines = sst2_lines("train", n)
    if model == "tiny-llama":
        make_tiny_model(folder / "models", "tiny-llama")
        rows = [json.loads(line) for line in lines]
        text = "".join(
            json.dumps(
                {"prompt": " ".join(r["text"].split()[:20]), "completion": " yes" if r["label"] else " no"}
            )
            + "\n"
            for r in rows
        )
    else:
        text = "".join(lines)
    path = folder / "train.jsonl"
    path.write_text(text)
    return path, str(folder / "models")


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from training.launch import torchrun_command

    cores = os.cpu_count() or 1
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ddp-step-") as tmp:
        folder = Path(tmp)
        train, models = _data(folder, args.model, args.batch * args.steps)
        hyper = {
            "n_epochs": 1,
            "max_steps": args.steps,
            "batch_size": args.batch,
            "max_seq_length": args.seq,
            "basis_steps": max(2, max(args.nproc)),
            "learning_rate": 1e-4,
            "eval_at_start": False,
            "checkpoint_every": 10_000,
        }
        for nproc in args.nproc:
            config = {
                "spec": {"model": args.model, "method": args.method, "hyperparameters": hyper, "seed": 0},
                "train": str(train),
                "work_dir": str(folder / f"run-{nproc}"),
                "models_dir": models,
                "precision": "fp32",  # the loss check compares exact arithmetic, not bf16 rounding
                "sharding": args.sharding,
                "result": str(folder / f"result-{nproc}.json"),
                "timings": str(folder / f"timings-{nproc}.json"),
            }
            run_file = folder / f"run-{nproc}.json"
            run_file.write_text(json.dumps(config))
            threads = args.threads or (max(1, cores // nproc) if args.device == "cpu" else 1)
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            if args.device == "cpu":
                env["CUDA_VISIBLE_DEVICES"] = ""
            cmd = torchrun_command(sys.executable, "bench.ddp_step", [run_file], nproc)
            cmd = [*cmd[:-1], "--rank", str(run_file)]
            started = time.perf_counter()
            done = subprocess.run(
                cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout
            )
            if done.returncode != 0:
                sys.stderr.write(done.stdout + done.stderr)
                raise SystemExit(f"ddp_step: {nproc} process(es) failed (exit {done.returncode})")
            timing = json.loads(Path(config["timings"]).read_text())
            steps = timing["step_s"][args.warmup :] or timing["step_s"]
            rows.append(
                {
                    "processes": nproc,
                    "threads_per_process": threads,
                    "step_ms": 1000 * statistics.median(steps),
                    "wall_s": time.perf_counter() - started,
                    "losses": timing["losses"],
                }
            )
    base = rows[0]["losses"]
    for row in rows[1:]:
        worst = max(abs(a - b) / abs(a) for a, b in zip(base, row["losses"], strict=True))
        row["loss_rel_diff"] = worst
        if worst > args.loss_tolerance:
            raise SystemExit(f"ddp_step: {row['processes']} processes' losses differ by {worst:.2e} relative")
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--rank"]:
        from training.launch import exit_rank

        exit_rank(_rank_main(Path(argv[1])))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny-llama", help="tiny-llama (built here) or all-MiniLM-L6-v2")
    parser.add_argument("--method", default="sparsegrad")
    parser.add_argument(
        "--nproc", default="1,2", help="comma list of process counts; the first is the reference"
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--sharding", default="none", choices=("none", "fsdp"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--threads", type=int, default=0, help="threads per process (0: cores / processes)")
    parser.add_argument(
        "--loss-tolerance",
        type=float,
        default=1e-4,
        help="largest relative loss difference allowed (inf for a model with dropout, e.g. MiniLM's 0.1)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.nproc = [int(n) for n in str(args.nproc).split(",")]
    rows = run(args)
    print(f"{args.model}, {args.method}, {args.device}, sharding {args.sharding}")
    print("| processes | threads each | step ms | x 1st | loss rel. diff | wall s |")
    print("|--:|--:|--:|--:|--:|--:|")
    for row in rows:
        ratio = row["step_ms"] / rows[0]["step_ms"]
        diff = f"{row['loss_rel_diff']:.1e}" if "loss_rel_diff" in row else "-"
        print(
            f"| {row['processes']} | {row['threads_per_process']} | {row['step_ms']:.0f} | {ratio:.2f} "
            f"| {diff} | {row['wall_s']:.1f} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
