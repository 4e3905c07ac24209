"""Inference bench: SmolLM2-135M-Instruct, its base against a SparseGrad fine-tune served on the shared base.

1. Starts the service on the embedded default (`sgft serve`, `sgft worker`, `sgft infer`, SQLite) and has
   its worker train a small SparseGrad fine-tune (chitchat conversations, the causal-LM job defaults,
   SGFT_BENCH_INFER_STEPS steps of batch 2); its delta is fetched through the API.
2. Through the service: time to first token and chunks/s at the official openai client (streaming), the
   base and the fine-tune interleaved (base, fine-tune right after the base: a swap before its first
   token, the fine-tune again: no swap), median of SGFT_BENCH_INFER_ROUNDS rounds.
3. In the engine (training.serving), same process, base and fine-tune interleaved: the fine-tune applied in
   place (the service's strategy) with and without the swap inside its first token, and on the hook
   strategy (x ΔWᵀ beside each target layer, the auto form); the swap's own cost (ms, base -> fine-tune and
   back); the memory the fine-tune holds against its delta file, the pristine copies held once per base.

`python -m bench.inference` (after `make models`; `SGFT_BENCH=inference make bench`) prints Markdown and
writes bench/out/inference.json. Knobs: SGFT_BENCH_INFER_ROUNDS (5), SGFT_BENCH_INFER_TOKENS (64),
SGFT_BENCH_INFER_STEPS (training steps, 10), SGFT_BENCH_INFER_THREADS (torch threads, here and in the
service's processes; 1), SGFT_BENCH_INFER_DATA_DIR (the service's data directory: a rerun on the same one
reuses the fine-tune it trained, else a fresh temporary one).
"""

from __future__ import annotations

import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "out"
ROUNDS = int(os.environ.get("SGFT_BENCH_INFER_ROUNDS", "5"))
TOKENS = int(os.environ.get("SGFT_BENCH_INFER_TOKENS", "64"))
STEPS = int(os.environ.get("SGFT_BENCH_INFER_STEPS", "10"))
THREADS = int(os.environ.get("SGFT_BENCH_INFER_THREADS", "1"))
PROMPT = [{"role": "user", "content": "What do you like to do on a rainy weekend? Tell me about it."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def median_rows(runs: dict[str, list[tuple[float, float, int]]]) -> dict[str, dict[str, float]]:
    return {
        name: {
            "ttft_s": statistics.median(r[0] for r in rs),
            "per_s": statistics.median(r[1] for r in rs),
            "tokens": rs[0][2],
        }
        for name, rs in runs.items()
    }


def timed(served: Any, ids: list[int], swap_in_clock: bool = False) -> tuple[float, float, int]:
    """(seconds to the first text, decode tokens/s after it, tokens) of one greedy reply of TOKENS tokens.
    `swap_in_clock`: the clock starts before the model is made current (a swap, where one is due, counts in
    the first token), else once it is."""
    from training.serving.generate import Finish, Sampling, stream_text

    start = time.perf_counter()
    first = end = 0.0
    tokens = 0
    with served.use():
        if not swap_in_clock:
            start = time.perf_counter()
        sampling = Sampling(max_tokens=TOKENS, temperature=0.0)
        for piece in stream_text(served.model, served.tokenizer, ids, sampling, time.monotonic() + 600, 8192):
            now = time.perf_counter()
            if isinstance(piece, Finish):
                tokens, end = piece.completion_tokens, now
            elif not first:
                first = now
    return first - start, (tokens - 1) / (end - first), tokens


def swap_ms(served: Any) -> float:
    start = time.perf_counter()
    with served.use():
        pass
    return (time.perf_counter() - start) * 1000


def engine(models_dir: Path, delta: Path) -> dict[str, Any]:
    import torch

    from sparsegrad.delta import delta_files
    from training.model_setup import SMOLLM2_NAME
    from training.serving.applied import AppliedBase
    from training.serving.generate import chat_prompt
    from training.serving.models import ModelCache, param_bytes

    cache = ModelCache(models_dir, budget=16 << 30)
    base = cache.serve_base(SMOLLM2_NAME, "causal_lm")
    tuned = cache.serve_delta("ft:bench", SMOLLM2_NAME, "causal_lm", delta)
    hook_cache = ModelCache(models_dir, budget=16 << 30, strategy="hook")
    hooked = hook_cache.serve_delta("ft:bench", SMOLLM2_NAME, "causal_lm", delta)
    assert tuned.mode == "shared" and tuned.adapter is not None and hooked.adapter is not None
    shared = base.base
    assert isinstance(shared, AppliedBase)
    ids = chat_prompt(base.tokenizer, PROMPT)
    for s in (base, tuned, hooked):
        timed(s, ids)  # warm-up (first calls allocate)
    names = (
        "base",
        "fine-tune, applied in place, swap from the base in its first token",
        "fine-tune, applied in place (already current)",
        "fine-tune, hook strategy (x ΔWᵀ per layer, auto form)",
    )
    runs: dict[str, list[tuple[float, float, int]]] = {n: [] for n in names}
    swaps: dict[str, list[float]] = {"base -> fine-tune": [], "fine-tune -> base": []}
    for _ in range(ROUNDS):
        runs[names[0]].append(timed(base, ids))  # the swap back to the base outside its clock
        runs[names[1]].append(timed(tuned, ids, swap_in_clock=True))
        runs[names[2]].append(timed(tuned, ids))
        runs[names[3]].append(timed(hooked, ids))
        swaps["fine-tune -> base"].append(swap_ms(base))
        swaps["base -> fine-tune"].append(swap_ms(tuned))
    pristine = {str(t.dtype) for t in shared._pristine.values()}
    return {
        "prompt_tokens": len(ids),
        "threads": torch.get_num_threads(),
        "rows": median_rows(runs),
        "swap_ms": {k: statistics.median(v) for k, v in swaps.items()},
        "memory": {
            "adapter_bytes": tuned.adapter.nbytes,
            "hook_adapter_bytes": hooked.adapter.nbytes,
            "delta_file_bytes": delta_files(delta)[1].stat().st_size,
            "merged_copy_bytes": param_bytes(base.model),
            "pristine_bytes_per_base": shared.extra_bytes,
            "pristine_dtypes": sorted(pristine),
            "layers": len(tuned.adapter.layers),
        },
    }


@contextmanager
def service(models_dir: Path, data_dir: Path) -> Iterator[tuple[str, str, dict[str, str]]]:
    """`sgft serve`, `sgft worker` and `sgft infer` on the embedded default: (API url, key, env)."""
    import httpx

    port, infer_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGFT_")}
    env |= {
        "SGFT_DATA_DIR": str(data_dir),
        "SGFT_PORT": str(port),
        "SGFT_INFER_PORT": str(infer_port),
        "SGFT_MODELS_DIR": str(models_dir),
        "OMP_NUM_THREADS": str(THREADS),
    }
    me = [sys.executable, "-m", "cli.main"]
    subprocess.run([*me, "migrate"], env=env, check=True, capture_output=True)
    key = subprocess.run(
        [*me, "keys", "create", "--tenant", "bench"], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    logs = data_dir / "bench-logs"
    logs.mkdir(exist_ok=True)
    procs = []
    for args in (["serve"], ["worker", "--concurrency", "1"], ["infer"]):
        log = (logs / f"{args[0]}.log").open("ab")
        procs.append(subprocess.Popen([*me, *args], env=env, stdout=log, stderr=subprocess.STDOUT))
    try:

        def up() -> bool:
            try:
                return all(
                    httpx.get(f"http://127.0.0.1:{p}/healthz", timeout=2).status_code == 200
                    for p in (port, infer_port)
                )
            except httpx.HTTPError:
                return False

        deadline = time.monotonic() + 120
        while not up():
            if time.monotonic() > deadline:
                raise RuntimeError("the API and sgft infer did not start in 120 s")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", key, env
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)


def fine_tune(url: str, key: str, data_dir: Path) -> tuple[dict[str, Any], Path]:
    """A succeeded SparseGrad job of SmolLM2 for this tenant (trained by the service's worker unless an
    earlier run on this data directory left one), and its delta folder fetched through the API."""
    import httpx

    from training.chitchat import convert
    from training.model_setup import SMOLLM2_NAME
    from worker.archives import extract

    c = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    done = [j for j in c.get("/v1/fine_tuning/jobs").json()["data"] if j["status"] == "succeeded"]
    if done:
        job = done[0]
    else:
        train, _ = convert(data_dir / "bench-data", 64, 4, seed=0, min_turns=2, max_chars=300)
        files = {"file": ("train.jsonl", io.BytesIO(train.read_bytes()), "application/jsonl")}
        file_id = c.post("/v1/files", files=files, data={"purpose": "fine-tune"}).json()["id"]
        hyper = {"max_steps": STEPS, "batch_size": 2, "max_seq_length": 128}
        body = {"model": SMOLLM2_NAME, "training_file": file_id, "hyperparameters": hyper, "seed": 0}
        created = c.post("/v1/fine_tuning/jobs", json=body)
        created.raise_for_status()
        started = time.perf_counter()
        while True:
            job = c.get(f"/v1/fine_tuning/jobs/{created.json()['id']}").json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(5)
        if job["status"] != "succeeded":
            raise RuntimeError(f"the bench's fine-tune ended {job['status']}: {job.get('error')}")
        print(f"the service trained {STEPS} steps in {time.perf_counter() - started:.0f} s", flush=True)
    delta = data_dir / "bench-delta" / job["id"]
    if not (delta / "delta").is_dir():
        archive = delta / "delta.tar.gz"
        archive.parent.mkdir(parents=True, exist_ok=True)
        archive.write_bytes(c.get(f"/v1/files/{job['result_files'][0]}/content").content)
        extract(archive, delta / "delta")
    return job, delta / "delta"


def through_service(url: str, key: str, fine_tuned: str) -> dict[str, Any]:
    """Time to first token and chunks/s at an openai client, through `sgft serve` -> `sgft infer`: base and
    fine-tune interleaved (the fine-tune right after the base swaps before its first token; again: none)."""
    import openai

    from training.model_setup import SMOLLM2_NAME

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=600)

    def once(model: str) -> tuple[float, float, int]:
        start = time.perf_counter()
        first = 0.0
        pieces = 0
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": PROMPT[0]["content"]}],
            max_tokens=TOKENS,
            temperature=0,
            stream=True,
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces += 1
                first = first or time.perf_counter()
        end = time.perf_counter()
        return first - start, (pieces - 1) / (end - first), pieces

    once(SMOLLM2_NAME), once(fine_tuned)  # loads the models in sgft infer
    names = ("base", "fine-tune, right after the base (a swap)", "fine-tune again (no swap)")
    runs: dict[str, list[tuple[float, float, int]]] = {n: [] for n in names}
    for _ in range(ROUNDS):
        runs[names[0]].append(once(SMOLLM2_NAME))
        runs[names[1]].append(once(fine_tuned))
        runs[names[2]].append(once(fine_tuned))
    return median_rows(runs)


def main() -> None:
    import torch

    from core.settings import get_settings
    from training.model_setup import SMOLLM2_NAME

    torch.set_num_threads(THREADS)
    models_dir = get_settings().models_path
    if not (models_dir / SMOLLM2_NAME / "config.json").is_file():
        print(f"{SMOLLM2_NAME} is not under {models_dir}: run `make models` first", file=sys.stderr)
        return
    given = os.environ.get("SGFT_BENCH_INFER_DATA_DIR")
    data_dir = Path(given) if given else Path(tempfile.mkdtemp(prefix="sgft-bench-infer-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.processor() or platform.machine(),
        "rounds": ROUNDS,
        "max_tokens": TOKENS,
    }
    with service(models_dir, data_dir) as (url, key, _env):
        job, delta = fine_tune(url, key, data_dir)
        report["fine_tuned_model"] = job["fine_tuned_model"]
        report["load_avg_service"] = os.getloadavg()
        report["service"] = through_service(url, key, job["fine_tuned_model"])
    report["load_avg_engine"] = os.getloadavg()
    report["engine"] = engine(models_dir, delta)
    report["load_avg_end"] = os.getloadavg()
    OUT.mkdir(exist_ok=True)
    (OUT / "inference.json").write_text(json.dumps(report, indent=2))
    e, m = report["engine"], report["engine"]["memory"]
    print("\n| in the engine | time to first token | decode tokens/s | tokens |\n|---|--:|--:|--:|")
    for name, row in e["rows"].items():
        print(f"| {name} | {row['ttft_s'] * 1000:.0f} ms | {row['per_s']:.2f} | {row['tokens']} |")
    print("\n| through the service (openai client, SSE) | time to first token | chunks/s | chunks |")
    print("|---|--:|--:|--:|")
    for name, row in report["service"].items():
        print(f"| {name} | {row['ttft_s'] * 1000:.0f} ms | {row['per_s']:.2f} | {row['tokens']} |")
    mib = 2**20
    print(
        "\nswap: "
        + ", ".join(f"{k} {v:.0f} ms" for k, v in e["swap_ms"].items())
        + f"; adapter {m['adapter_bytes'] / mib:.2f} MiB ({m['adapter_bytes'] / m['delta_file_bytes']:.2f}x "
        f"its delta file of {m['delta_file_bytes'] / mib:.2f} MiB), pristine copies once per base "
        f"{m['pristine_bytes_per_base'] / mib:.1f} MiB ({', '.join(m['pristine_dtypes'])}), merged copy "
        f"{m['merged_copy_bytes'] / mib:.0f} MiB; {m['layers']} layers; prompt {e['prompt_tokens']} tokens, "
        f"{e['threads']} threads; load average {report['load_avg_service']} (service), "
        f"{report['load_avg_engine']} (engine), {report['load_avg_end']} (end)"
    )


if __name__ == "__main__":
    main()
