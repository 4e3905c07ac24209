"""Quality benchmark: all-MiniLM-L6-v2 fine-tuned on SST-2 with full, LoRA, MeProp and SparseGrad.

Every run goes through the service's engine (`training.run_training`) on the same fixed training subset (a
seeded sample of SST-2 train), is evaluated on the whole SST-2 dev set (872 sentences), max length 128 with
dynamic padding. The dev set is also the validation file, so every run pins result_checkpoint "last": the
reported model is the last step's, never one selected on the dev set it is scored on. Reported per method
over seeds: dev accuracy mean and spread (min-max), wall time per run, trainable parameters; then
SparseGrad's per-seed difference to LoRA and to full fine-tuning (mean ± standard error over the seeds both
ran) and the target's verdict (at least LoRA, within 0.5 points of full). Writes
bench/out/quality.json, bench/out/quality.md and bench/out/loss_curves.png.

Two set-ups. The default is the service's: LoRA, MeProp and SparseGrad train only the MLP layers (adapters or
sparse coefficients) and the classifier head. `--rest-dense` (SGFT_BENCH_QUALITY_REST_DENSE=1) is the
paper's GLUE set-up: they also train every other weight (attention, embeddings, norms, head) densely, at
full fine-tuning's learning rate (`dense_learning_rate`), while the method's own parameters (sparse
coefficients, adapters) keep the method's rate; outputs then go to quality_rest_dense.*.

`python -m bench.quality` (or `SGFT_BENCH=quality make bench`). Knobs (environment or flags):
SGFT_BENCH_QUALITY_TRAIN (--train, default 2000 examples), SGFT_BENCH_QUALITY_SEEDS (--seeds, "0,1,2"),
SGFT_BENCH_QUALITY_METHODS (--methods, "full,lora,meprop,sparsegrad"), SGFT_BENCH_QUALITY_LR (--lr,
learning-rate overrides "method=value,…" for tuning), SGFT_BENCH_QUALITY_HP (--hp, any other
hyper-parameter "method.key=value,…", e.g. sparsegrad.support=fixed), SGFT_BENCH_QUALITY_EPOCHS
(--epochs, 2), SGFT_BENCH_QUALITY_DEV (--dev, 872), SGFT_BENCH_QUALITY_THREADS (--threads, torch's
default), SGFT_BENCH_QUALITY_JOBS (--jobs, runs at a time in worker processes, default 1; on 2 cores
`--jobs 2 --threads 1` keeps both busy). The defaults are sized for ~40 minutes on 2 idle CPU
cores; `--train 400 --seeds 0 --dev 200` checks the machinery in a few minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from rules.hparam_bounds import REMOVED

DATA = Path("/work/shared/data/sst2")
OUT_DIR = Path(__file__).resolve().parent / "out"
MODEL = "all-MiniLM-L6-v2"
# Starting values, the same for every seed (tune on SST-2 only). Methods other than full train only the MLP
# layers (sparse coefficients or LoRA factors) and the classifier head. SparseGrad picks its k coefficients
# by their Adam step (selection="adam", the job default for classification runs of 100+ steps); "gradient" is
# the paper's rule.
METHOD_HP: dict[str, dict[str, Any]] = {
    "full": {"learning_rate": 1e-4},
    "lora": {"learning_rate": 2e-3},
    "meprop": {"learning_rate": 2e-3, "density": 0.01},
    "sparsegrad": {"learning_rate": 2e-3, "density": 0.01, "basis_steps": 10, "selection": "adam"},
}
COMMON: dict[str, Any] = {
    "batch_size": 32,
    "max_seq_length": 128,
    "warmup_ratio": 0.1,
    "eval_at_start": False,
}
# The dev set is both the validation file and the reported score: the result is always the last step, never
# one picked by its score on that dev set (no override changes this).
PINNED: dict[str, Any] = {"result_checkpoint": "last"}


def _env(name: str, default: str) -> str:
    return os.environ.get(f"SGFT_BENCH_QUALITY_{name}", default)


def write_data(folder: Path, n_train: int, n_dev: int, data_seed: int = 0) -> tuple[Path, Path]:
    """A seeded sample of `n_train` SST-2 train lines and the first `n_dev` dev lines, as JSONL files."""
    lines = (DATA / "train.jsonl").read_text(encoding="utf-8").splitlines()
    sample = random.Random(data_seed).sample(lines, n_train)
    dev = (DATA / "dev.jsonl").read_text(encoding="utf-8").splitlines()[:n_dev]
    folder.mkdir(parents=True, exist_ok=True)
    train, valid = folder / "train.jsonl", folder / "dev.jsonl"
    train.write_text("\n".join(sample) + "\n", encoding="utf-8")
    valid.write_text("\n".join(dev) + "\n", encoding="utf-8")
    return train, valid


def run_one(
    method: str,
    seed: int,
    epochs: float,
    train: Path,
    valid: Path,
    work: Path,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One fine-tune; returns its row (dev metrics, wall time, trainable parameters, loss curve)."""
    from bench.step_time import dir_bytes
    from training import JobSpec, run_training

    hp = {**COMMON, **METHOD_HP[method], "n_epochs": epochs, "eval_every": 10**6, "checkpoint_every": 10**6}
    hp.update(overrides or {})
    hp.update(PINNED)
    library = {k: hp.pop(k) for k in list(hp) if k in REMOVED}  # SparseGradConfig knobs the job API dropped
    spec = JobSpec(model=MODEL, method=method, task="classification", hyperparameters=hp, seed=seed)  # type: ignore[arg-type]
    spec.library = library
    started = time.perf_counter()
    result = run_training(spec, train, valid, work)
    wall = time.perf_counter() - started
    curve = [(int(r["step"]), float(r["train_loss"])) for r in result.history if "train_loss" in r]
    assert result.delta_dir is not None
    return {
        "method": method,
        "seed": seed,
        "hyperparameters": hp,
        "steps": result.step,
        "accuracy": result.metrics["valid_accuracy"],
        "f1": result.metrics.get("valid_f1"),
        "valid_loss": result.metrics["valid_loss"],
        "wall_s": wall,
        "trainable_parameters": int(result.metrics["trainable_parameters"]),
        "delta_bytes": dir_bytes(result.delta_dir),
        "loss_curve": curve,
    }


def parse_overrides(hp: str, lr: str = "", names: Iterable[str] = METHOD_HP) -> dict[str, dict[str, Any]]:
    """Per-method overrides from "method.key=value,…" (values read as JSON where they parse, else strings)
    and the learning-rate shorthand "method=value,…"; `names`: the methods (or bench variants) allowed."""
    names = sorted(names)
    out: dict[str, dict[str, Any]] = {}
    items = [x.strip() for x in hp.split(",") if x.strip()]
    items += [
        f"{x.strip().partition('=')[0]}.learning_rate={x.partition('=')[2]}"
        for x in lr.split(",")
        if x.strip()
    ]
    for item in items:
        name, eq, value = item.partition("=")
        method, dot, key = name.partition(".")
        if not eq or not dot or method not in names:
            raise SystemExit(f"bad override {item!r}: expected method.key=value with a method of {names}")
        try:
            parsed: Any = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(method, {})[key] = parsed
    return out


def _set_threads(threads: int) -> None:
    if threads > 0:  # on a busy machine one thread per process avoids OpenMP thrashing
        import torch

        torch.set_num_threads(threads)


def _run_and_print(args: tuple[Any, ...]) -> dict[str, Any]:
    row = run_one(*args)
    acc, wall = 100 * row["accuracy"], row["wall_s"]
    print(
        f"{row['method']} seed {row['seed']}: dev accuracy {acc:.2f}% in {wall:.0f} s ({row['steps']} steps)"
    )
    return row


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method: accuracy mean, min, max, standard deviation; mean wall time; trainable parameters."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        acc = [100 * r["accuracy"] for r in mine]
        out.append(
            {
                "method": method,
                "runs": len(mine),
                "accuracy_mean": statistics.mean(acc),
                "accuracy_min": min(acc),
                "accuracy_max": max(acc),
                "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "wall_s_mean": statistics.mean(r["wall_s"] for r in mine),
                "trainable_parameters": mine[0]["trainable_parameters"],
                "delta_mb_mean": statistics.mean(r["delta_bytes"] for r in mine) / 2**20,
            }
        )
    return out


def paired(rows: list[dict[str, Any]], method: str, against: str) -> dict[str, Any] | None:
    """Per-seed accuracy difference `method` - `against` (points) over the seeds both ran: mean, standard
    error of the mean, and on how many seeds `method` was at least as good. None where no seed is shared."""
    acc = {(r["method"], r["seed"]): 100 * r["accuracy"] for r in rows}
    seeds = sorted(s for m, s in acc if m == method and (against, s) in acc)
    if not seeds:
        return None
    diffs = [acc[method, s] - acc[against, s] for s in seeds]
    sem = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
    wins = sum(d >= 0 for d in diffs)
    return {
        "method": method,
        "against": against,
        "seeds": seeds,
        "mean": statistics.mean(diffs),
        "sem": sem,
        "wins": wins,
    }


def verdict(rows: list[dict[str, Any]]) -> str:
    """The issue's target, judged on paired seeds: SparseGrad at least LoRA and within 0.5 points of full."""
    lines, met = [], []
    for against, floor in (("lora", 0.0), ("full", -0.5)):
        d = paired(rows, "sparsegrad", against)
        if d is None:
            continue
        met.append(d["mean"] >= floor)
        lines.append(
            f"sparsegrad - {against}: {d['mean']:+.2f} ± {d['sem']:.2f} points (per-seed mean ± standard "
            f"error, {d['wins']} of {len(d['seeds'])} seeds >= 0; target >= {floor:+.1f})"
        )
    if len(met) < 2:  # the verdict needs both comparisons
        return "".join(f"{line}\n" for line in lines)
    return (
        "\n".join(lines)
        + f"\ntarget (sparsegrad >= lora, within 0.5 of full): {'met' if all(met) else 'missed'}\n"
    )


def table(summary: list[dict[str, Any]]) -> str:
    """Markdown table of the summary."""
    head = (
        "| method | dev accuracy % (mean) | min-max | std | runs | wall time / run (s) | trainable params "
        "| delta MB |\n|---|---|---|---|---|---|---|---|\n"
    )
    body = "\n".join(
        f"| {s['method']} | {s['accuracy_mean']:.2f} | {s['accuracy_min']:.2f}-{s['accuracy_max']:.2f} "
        f"| {s['accuracy_std']:.2f} | {s['runs']} | {s['wall_s_mean']:.0f} | {s['trainable_parameters']:,} "
        f"| {s['delta_mb_mean']:.1f} |"
        for s in summary
    )
    return head + body + "\n"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Training loss per step (moving average over 10 steps, mean over seeds), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        curves = [dict(r["loss_curve"]) for r in rows if r["method"] == method]
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        mean = [statistics.mean(c[s] for c in curves) for s in steps]
        smooth = [statistics.mean(mean[max(0, i - 9) : i + 1]) for i in range(len(mean))]
        ax.plot(steps, smooth, label=method)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (10-step moving average)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Run the selected methods x seeds, print the table, write the JSON, Markdown and PNG outputs."""
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=int(_env("TRAIN", "2000")))
    parser.add_argument("--dev", type=int, default=int(_env("DEV", "872")))
    parser.add_argument("--epochs", type=float, default=float(_env("EPOCHS", "2")))
    parser.add_argument("--seeds", default=_env("SEEDS", "0,1,2"))
    parser.add_argument("--methods", default=_env("METHODS", "full,lora,meprop,sparsegrad"))
    parser.add_argument(
        "--threads", type=int, default=int(_env("THREADS", "0")), help="torch threads; 0: default"
    )
    parser.add_argument(
        "--lr", default=_env("LR", ""), help="learning-rate overrides, e.g. sparsegrad=3e-3,lora=1e-3"
    )
    parser.add_argument(
        "--hp",
        default=_env("HP", ""),
        help="other hyper-parameter overrides, e.g. sparsegrad.support=fixed,sparsegrad.basis_steps=30",
    )
    parser.add_argument(
        "--jobs", type=int, default=int(_env("JOBS", "1")), help="runs at a time, each in its own process"
    )
    parser.add_argument(
        "--rest-dense",
        action="store_true",
        default=_env("REST_DENSE", "") not in ("", "0"),
        help="the paper's set-up: non-target weights also train densely (at full fine-tuning's LR)",
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv if argv is not None else [])
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHOD_HP)
    if unknown:
        raise SystemExit(f"unknown method(s) {sorted(unknown)}; choose from {sorted(METHOD_HP)}")
    overrides = parse_overrides(args.hp, args.lr)
    if args.rest_dense:
        for method in set(METHOD_HP) - {"full"}:
            paper = {"train_rest_dense": True, "dense_learning_rate": METHOD_HP["full"]["learning_rate"]}
            overrides[method] = {**paper, **overrides.get(method, {})}
    suffix = "_rest_dense" if args.rest_dense else ""  # of every output file name
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sgft-quality-") as tmp:
        train, valid = write_data(Path(tmp) / "data", args.train, args.dev)
        runs = [
            (method, seed, args.epochs, train, valid, Path(tmp) / f"{method}-{seed}", overrides.get(method))
            for seed in seeds
            for method in methods
        ]
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter per worker, torch threads its own
        with ProcessPoolExecutor(args.jobs, ctx, initializer=_set_threads, initargs=(args.threads,)) as pool:
            rows = list(pool.map(_run_and_print, runs))
    summary = summarize(rows)
    text = table(summary) + "\n" + verdict(rows)
    print(text)
    report = {
        "model": MODEL,
        "data": {"train": args.train, "train_sample_seed": 0, "dev": args.dev, "max_seq_length": 128},
        "epochs": args.epochs,
        "rest_dense": args.rest_dense,
        "seeds": seeds,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "threads": args.threads or None,
            "jobs": args.jobs,
        },
        "summary": summary,
        "paired": [paired(rows, "sparsegrad", other) for other in ("lora", "full", "meprop")],
        "runs": rows,
    }
    (args.out / f"quality{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"quality{suffix}.md").write_text(
        f"SST-2, {MODEL}: {args.train} training examples, {args.epochs:g} epochs, dev {args.dev}, "
        f"seeds {seeds}\n\n" + text
    )
    title = f"{MODEL} on SST-2" + (", other weights dense" if args.rest_dense else "")
    plot(rows, args.out / f"loss_curves{suffix}.png", title)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
