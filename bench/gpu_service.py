"""One fine-tuning job through the real service on the embedded default, for the GPU check.

In a temp SGFT_DATA_DIR: a tiny random LLaMA with an offline tokenizer registered under SGFT_MODELS_DIR,
`sgft migrate`, `sgft keys create`, then `sgft run` (API + worker + reaper; SQLite database, kombu's SQLite
broker, artifacts on local disk). Uploads a chat data set, creates a SparseGrad job on the gpu queue, waits
for it to succeed, downloads its delta archive and checks it, then stops `sgft run` with Ctrl-C (SIGINT).
Prints the job's events; exits 1 with the service logs' tails on any failure.

    python3 -m bench.gpu_service [--timeout 150] [--keep DIR] [--expect-device cuda|cpu|any]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from training.testing import build_model, build_tokenizer, chat_records, write_jsonl

REPO = Path(__file__).resolve().parent.parent
MODEL = "tiny-llama"
HYPER = {"n_epochs": 1, "batch_size": 4, "max_seq_length": 64, "basis_steps": 2, "eval_at_start": False}


class CheckFailed(RuntimeError):
    """The service did something other than run the job to success."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_model(models_dir: Path) -> Path:
    """A tiny random LLaMA (hidden 32, 2 blocks) and a WordLevel chat tokenizer, built offline."""
    tokenizer = build_tokenizer("llama", [json.dumps(r) for r in chat_records(8)])  # every word of the data
    folder = models_dir / MODEL
    folder.mkdir(parents=True)
    build_model("llama", len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def service_env(data: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGFT_")}
    env.update(
        SGFT_DATA_DIR=str(data),
        SGFT_MODELS_DIR=str(data / "models"),
        SGFT_PORT=str(port),
        SGFT_HOST="127.0.0.1",
        SGFT_JOB_QUEUE="gpu",
        SGFT_WORKER_QUEUES="gpu",
        SGFT_PRECISION=os.environ.get("SGFT_PRECISION", "auto"),
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    return env


def sgft(env: dict[str, str], cwd: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
    )
    if done.returncode != 0:
        raise CheckFailed(f"sgft {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout


def wait_ready(client: httpx.Client, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CheckFailed(f"sgft run exited ({proc.returncode}) before the API was ready")
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise CheckFailed(f"the API was not ready within {timeout:.0f} s")


def call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    r = client.request(method, path, **kwargs)
    if r.status_code >= 400:
        raise CheckFailed(f"{method} {path} -> HTTP {r.status_code}: {r.text[:2000]}")
    return r.json()


def run_job(client: httpx.Client, data: Path, timeout: float, device: str) -> dict[str, Any]:
    """Upload, create, wait for a final status; returns the job (or raises with its events). `device`
    ("cuda", "cpu"; "any" skips the check): the worker's precision event must name it."""
    train = write_jsonl(data / "train.jsonl", chat_records(32))
    with train.open("rb") as fh:
        upload = {"files": {"file": (train.name, fh)}, "data": {"purpose": "fine-tune"}}
        uploaded = call(client, "POST", "/v1/files", **upload)
    body = {
        "model": MODEL,
        "training_file": uploaded["id"],
        "method": {"type": "sparsegrad", "sparsegrad": {"hyperparameters": HYPER}},
    }
    job: dict[str, Any] = call(client, "POST", "/v1/fine_tuning/jobs", json=body)
    print(f"job {job['id']} created ({job['status']})", flush=True)
    deadline = time.monotonic() + timeout
    while job["status"] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(1)
        job = call(client, "GET", f"/v1/fine_tuning/jobs/{job['id']}")
    events = call(client, "GET", f"/v1/fine_tuning/jobs/{job['id']}/events", params={"order": "asc"})
    for event in events["data"]:
        print(f"  event: {event['message']}", flush=True)
    if job["status"] != "succeeded":
        raise CheckFailed(f"job {job['id']} ended {job['status']} (error: {job.get('error')}) in {timeout} s")
    said = [e["message"] for e in events["data"] if e["message"].startswith("Precision ")]
    if device != "any" and not any(f" on {device}" in m for m in said):
        raise CheckFailed(f"the job did not train on {device}: its precision events are {said}")
    return job


def check_delta(client: httpx.Client, job: dict[str, Any]) -> None:
    """The first result file is a .tar.gz holding the SparseGrad delta."""
    if not job.get("result_files"):
        raise CheckFailed(f"job {job['id']} succeeded without result files")
    r = client.get(f"/v1/files/{job['result_files'][0]}/content")
    if r.status_code != 200:
        raise CheckFailed(f"delta download -> HTTP {r.status_code}: {r.text[:500]}")
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        sizes = {m.name.removeprefix("./"): m.size for m in tar.getmembers() if m.isfile()}
    for name in ("sparsegrad_delta.json", "sparsegrad_delta.safetensors"):
        if sizes.get(name, 0) <= 0:
            raise CheckFailed(f"the delta archive lacks {name}: {sizes}")
    print(f"delta archive: {len(r.content):,} bytes, {json.dumps(sizes)}", flush=True)
    print(f"metrics: {json.dumps(job.get('metrics'))}", flush=True)


def stop(proc: subprocess.Popen[bytes]) -> int:
    """Ctrl-C for `sgft run` (it stops its children in order); SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()  # its children die with it (PR_SET_PDEATHSIG)
        proc.wait()
        return -9


def check(data: Path, timeout: float, device: str) -> None:
    port = free_port()
    env = service_env(data, port)
    make_model(data / "models")
    sgft(env, data, "migrate")
    key = sgft(env, data, "keys", "create", "--tenant", "gpu-check").strip().splitlines()[-1]
    log = (data / "run.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "run"], env=env, cwd=data, stdout=log, stderr=subprocess.STDOUT
    )
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as client:
            wait_ready(client, proc, 60)
            print(f"sgft run is ready on port {port}", flush=True)
            job = run_job(client, data, timeout, device)
            check_delta(client, job)
    except BaseException:
        stop(proc)
        log.close()
        print(f"--- run.log (tail) ---\n{(data / 'run.log').read_text(errors='replace')[-6000:]}", flush=True)
        raise
    code = stop(proc)
    log.close()
    text = (data / "run.log").read_text(errors="replace")
    if code != 0 or "sgft: stopped" not in text:
        raise CheckFailed(f"sgft run did not stop cleanly (exit {code}):\n{text[-3000:]}")
    print("sgft run stopped cleanly", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_service", description=__doc__.split("\n\n")[0])
    p.add_argument("--timeout", type=float, default=150, help="seconds for the job to finish")
    p.add_argument("--keep", type=Path, help="use this (new) data folder and keep it")
    p.add_argument("--expect-device", choices=["cuda", "cpu", "any"], default="any", help="where it trains")
    args = p.parse_args(argv)
    try:
        if args.keep is not None:
            args.keep.mkdir(parents=True)
            check(args.keep.resolve(), args.timeout, args.expect_device)
        else:
            with tempfile.TemporaryDirectory(prefix="sgft-gpu-check-") as tmp:
                check(Path(tmp), args.timeout, args.expect_device)
    except CheckFailed as exc:
        print(f"gpu_service: FAILED {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
