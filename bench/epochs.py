"""The auto epoch rule, measured: SST-2 dev accuracy of the service's default job at several epoch counts.

Every run is the job a user gets with no settings but `n_epochs`: SparseGrad on all-MiniLM-L6-v2, the auto
batch size and learning rate (rules.hparam_auto), through the service's engine (`training.run_training`).
Training sets are seeded samples of SST-2 train (the same sample for every seed and epoch count); the score is
the whole SST-2 dev set (872 sentences), read from the last step (result_checkpoint "last": the dev set is
never used to pick a step). For each training-set size the table gives the dev accuracy per epoch count
(mean and min-max over seeds), the optimizer steps and wall time per run, and marks the count that
`rules.hparam_auto.auto_epochs` picks. Writes bench/out/epochs.json and bench/out/epochs.md.

`python -m bench.epochs` (or `SGFT_BENCH=epochs make bench`). Knobs: SGFT_BENCH_EPOCHS_GRID (--grid, the
lines and epoch counts, default "300=2,3,10;2000=2,3"), SGFT_BENCH_EPOCHS_SEEDS (--seeds, "0,1"),
SGFT_BENCH_EPOCHS_JOBS (--jobs, runs at a time, default 2, one torch thread each). About 2 hours on 2 cores
at the defaults; `--grid 100=2 --seeds 0` checks the machinery in a few minutes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench.quality import MODEL, OUT_DIR, write_data
from rules.hparam_auto import auto_epochs


def _env(name: str, default: str) -> str:
    return os.environ.get(f"SGFT_BENCH_EPOCHS_{name}", default)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_grid(text: str) -> dict[int, list[int]]:
    """ "300=2,3,10;2000=2,3" -> {300: [2, 3, 10], 2000: [2, 3]}."""
    grid = {}
    for part in text.split(";"):
        size, eq, epochs = part.partition("=")
        if not eq or not epochs.strip():
            raise SystemExit(f"bad grid entry {part!r}: expected lines=epochs,epochs,...")
        grid[int(size)] = _ints(epochs)
    return grid


def run_one(size: int, epochs: int, seed: int, train: Path, valid: Path, work: Path) -> dict[str, Any]:
    """One default SparseGrad job with `n_epochs=epochs`; its dev accuracy at the last step."""
    import torch

    from training import JobSpec, run_training

    torch.set_num_threads(1)
    hp = {"n_epochs": epochs, "result_checkpoint": "last", "eval_every": 10**6, "checkpoint_every": 10**6}
    spec = JobSpec(model=MODEL, method="sparsegrad", task="classification", hyperparameters=hp, seed=seed)
    started = time.perf_counter()
    result = run_training(spec, train, valid, work)
    row = {
        "size": size,
        "epochs": epochs,
        "seed": seed,
        "steps": result.step,
        "accuracy": result.metrics["valid_accuracy"],
        "valid_loss": result.metrics["valid_loss"],
        "wall_s": time.perf_counter() - started,
    }
    accuracy = 100 * row["accuracy"]
    print(f"{size} lines, {epochs} epochs, seed {seed}: dev accuracy {accuracy:.2f}%", flush=True)
    return row


def _run(args: tuple[Any, ...]) -> dict[str, Any]:
    return run_one(*args)


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per (size, epochs), the auto rule's choice marked."""
    lines = [
        "| lines | epochs | dev accuracy % (mean, min-max) | runs | steps | wall s/run |",
        "|--:|--:|--|--:|--:|--:|",
    ]
    for size, epochs in dict.fromkeys((r["size"], r["epochs"]) for r in rows):
        mine = [r for r in rows if r["size"] == size and r["epochs"] == epochs]
        acc = [100 * r["accuracy"] for r in mine]
        mark = " (auto)" if auto_epochs(size) == epochs else ""
        lines.append(
            f"| {size} | {epochs}{mark} | {statistics.mean(acc):.2f} ({min(acc):.2f}-{max(acc):.2f}) "
            f"| {len(mine)} | {mine[0]['steps']} | {statistics.mean(r['wall_s'] for r in mine):.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.epochs", description=__doc__.split("\n")[0])
    parser.add_argument("--grid", default=_env("GRID", "300=2,3,10;2000=2,3"))
    parser.add_argument("--seeds", default=_env("SEEDS", "0,1"))
    parser.add_argument("--jobs", type=int, default=int(_env("JOBS", "2")))
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv if argv is not None else [])
    grid, seeds = parse_grid(args.grid), _ints(args.seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sgft-epochs-") as tmp:
        runs = []
        for size, epoch_counts in grid.items():
            train, valid = write_data(Path(tmp) / f"data-{size}", size, 872)
            runs += [
                (size, e, s, train, valid, Path(tmp) / f"{size}-{e}-{s}") for e in epoch_counts for s in seeds
            ]
        runs.sort(key=lambda r: -r[0] * r[1])  # longest first, so the pool ends together
        with ProcessPoolExecutor(args.jobs, multiprocessing.get_context("spawn")) as pool:
            rows = list(pool.map(_run, runs))
    rows.sort(key=lambda r: (r["size"], r["epochs"], r["seed"]))
    text = table(rows)
    print(text)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "jobs": args.jobs, "threads": 1}
    report = {"model": MODEL, "method": "sparsegrad", "dev": 872, "machine": machine, "rows": rows}
    (args.out / "epochs.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.out / "epochs.md").write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
