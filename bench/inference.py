"""Inference bench: SmolLM2-135M-Instruct, its base against a SparseGrad fine-tune served on the shared base.

1. Trains a small SparseGrad fine-tune in process (chitchat conversations, the causal-LM job defaults).
2. Memory: the bytes the fine-tune's adapter holds on the shared base (factored ΔW + dense parameters)
   against its delta file and a merged copy's weights; the process's RSS growth when it is attached.
3. Time to first token and decode tokens/s, greedy, in the engine (training.serving.generate), base and
   fine-tune interleaved over SGFT_BENCH_INFER_ROUNDS rounds (median).
4. The same measured at an openai client through the service (`sgft serve` + `sgft infer` on the embedded
   default, SSE), base model: what the proxy path adds to the first token.

`python -m bench.inference` (after `make models`; `SGFT_BENCH=inference make bench`) prints Markdown and
writes bench/out/inference.json. Knobs: SGFT_BENCH_INFER_ROUNDS (5), SGFT_BENCH_INFER_TOKENS (64),
SGFT_BENCH_INFER_STEPS (training steps, 10),
SGFT_BENCH_INFER_DELTA (a delta folder of an earlier run: skips the training).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "out"
ROUNDS = int(os.environ.get("SGFT_BENCH_INFER_ROUNDS", "5"))
TOKENS = int(os.environ.get("SGFT_BENCH_INFER_TOKENS", "64"))
STEPS = int(os.environ.get("SGFT_BENCH_INFER_STEPS", "10"))
PROMPT = [{"role": "user", "content": "What do you like to do on a rainy weekend? Tell me about it."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed(served: Any, ids: list[int]) -> tuple[float, float, int]:
    """(seconds to the first text, decode tokens/s after it, tokens) of one greedy reply of TOKENS tokens."""
    from training.serving.adapters import activate
    from training.serving.generate import Finish, Sampling, stream_text

    start = time.perf_counter()
    first = end = 0.0
    tokens = 0
    with activate(served.adapter):
        sampling = Sampling(max_tokens=TOKENS, temperature=0.0)
        for piece in stream_text(served.model, served.tokenizer, ids, sampling, time.monotonic() + 600, 8192):
            now = time.perf_counter()
            if isinstance(piece, Finish):
                tokens, end = piece.completion_tokens, now
            elif not first:
                first = now
    return first - start, (tokens - 1) / (end - first), tokens


def engine(models_dir: Path, delta: Path) -> dict[str, Any]:
    import torch

    from sparsegrad.delta import delta_files
    from training.model_setup import SMOLLM2_NAME
    from training.serving.generate import chat_prompt
    from training.serving.models import ModelCache, param_bytes

    cache = ModelCache(models_dir, budget=16 << 30)
    before = rss()
    base = cache.serve_base(SMOLLM2_NAME, "causal_lm")
    after_base = rss()
    tuned = cache.serve_delta("ft:bench", SMOLLM2_NAME, "causal_lm", delta)
    after_tuned = rss()
    assert tuned.mode == "shared" and tuned.adapter is not None
    ids = chat_prompt(base.tokenizer, PROMPT)
    timed(base, ids), timed(tuned, ids)  # warm-up (first calls allocate)
    runs: dict[str, list[tuple[float, float, int]]] = {"base": [], "fine-tune (shared base)": []}
    for _ in range(ROUNDS):
        runs["base"].append(timed(base, ids))
        runs["fine-tune (shared base)"].append(timed(tuned, ids))
    rows = {
        name: {
            "ttft_s": statistics.median(r[0] for r in rs),
            "tokens_per_s": statistics.median(r[1] for r in rs),
            "tokens": rs[0][2],
        }
        for name, rs in runs.items()
    }
    return {
        "prompt_tokens": len(ids),
        "threads": torch.get_num_threads(),
        "rows": rows,
        "memory": {
            "adapter_bytes": tuned.adapter.nbytes,
            "delta_file_bytes": delta_files(delta)[1].stat().st_size,
            "merged_copy_bytes": param_bytes(base.model),
            "rss_base_bytes": after_base - before,
            "rss_adapter_bytes": after_tuned - after_base,
            "layers": len(tuned.adapter.layers),
        },
    }


def service(models_dir: Path) -> dict[str, Any]:
    """Time to first token and tokens/s at an openai client, through `sgft serve` -> `sgft infer`."""
    import httpx
    import openai

    from training.model_setup import SMOLLM2_NAME

    tmp = Path(tempfile.mkdtemp(prefix="sgft-bench-infer-"))
    port, infer_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGFT_")}
    env |= {
        "SGFT_DATA_DIR": str(tmp),
        "SGFT_PORT": str(port),
        "SGFT_INFER_PORT": str(infer_port),
        "SGFT_MODELS_DIR": str(models_dir),
    }
    me = [sys.executable, "-m", "cli.main"]
    subprocess.run([*me, "migrate"], env=env, check=True, capture_output=True)
    key = subprocess.run(
        [*me, "keys", "create", "--tenant", "bench"], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    procs = [
        subprocess.Popen([*me, cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for cmd in ("serve", "infer")
    ]
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
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=600
        )

        def once() -> tuple[float, float, int]:
            start = time.perf_counter()
            first = 0.0
            pieces = 0
            stream = client.chat.completions.create(
                model=SMOLLM2_NAME,
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

        once()  # loads the model in sgft infer
        runs = [once() for _ in range(ROUNDS)]
        return {
            "ttft_s": statistics.median(r[0] for r in runs),
            "chunks_per_s": statistics.median(r[1] for r in runs),
            "chunks": runs[0][2],
        }
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)


def main() -> None:
    from core.settings import get_settings
    from training import JobSpec, run_training
    from training.chitchat import convert
    from training.model_setup import SMOLLM2_NAME

    models_dir = get_settings().models_path
    if not (models_dir / SMOLLM2_NAME / "config.json").is_file():
        print(f"{SMOLLM2_NAME} is not under {models_dir}: run `make models` first", file=sys.stderr)
        return
    reuse = os.environ.get("SGFT_BENCH_INFER_DELTA")  # a delta folder from an earlier run: no training
    if reuse:
        delta = Path(reuse)
    else:
        work = Path(tempfile.mkdtemp(prefix="sgft-bench-infer-"))
        train, valid = convert(work / "data", 64, 4, seed=0, min_turns=2, max_chars=300)
        spec = JobSpec(
            model=SMOLLM2_NAME,
            method="sparsegrad",
            seed=0,
            hyperparameters={"max_steps": STEPS, "batch_size": 2, "max_seq_length": 128},
        )
        started = time.perf_counter()
        result = run_training(spec, train, valid, work / "run", models_dir=models_dir)
        assert result.delta_dir is not None
        delta = result.delta_dir
        print(f"trained {STEPS} steps in {time.perf_counter() - started:.0f} s; delta in {delta}", flush=True)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.processor() or platform.machine(),
        "load_avg": os.getloadavg()[0],
        "rounds": ROUNDS,
        "max_tokens": TOKENS,
        "engine": engine(models_dir, delta),
        "service": service(models_dir),
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "inference.json").write_text(json.dumps(report, indent=2))
    e, m = report["engine"], report["engine"]["memory"]
    print("\n| served | time to first token | decode tokens/s | tokens |\n|---|--:|--:|--:|")
    for name, row in e["rows"].items():
        print(f"| {name} | {row['ttft_s'] * 1000:.0f} ms | {row['tokens_per_s']:.1f} | {row['tokens']} |")
    s = report["service"]
    print(
        f"| base through the service (openai client, SSE) | {s['ttft_s'] * 1000:.0f} ms | "
        f"{s['chunks_per_s']:.1f} chunks/s | {s['chunks']} chunks |"
    )
    mib = 2**20
    ratio = m["adapter_bytes"] / m["delta_file_bytes"]
    print(
        f"\nadapter {m['adapter_bytes'] / mib:.2f} MiB ({ratio:.2f}x its delta file of "
        f"{m['delta_file_bytes'] / mib:.2f} MiB; RSS +{m['rss_adapter_bytes'] / mib:.1f} MiB) against a "
        f"merged copy's {m['merged_copy_bytes'] / mib:.0f} MiB; {m['layers']} layers; "
        f"prompt {e['prompt_tokens']} tokens, {e['threads']} threads, load average {report['load_avg']:.2f}"
    )


if __name__ == "__main__":
    main()
