"""The user-facing commands of `sgft`: `files upload|list`, `jobs create|list|get|watch|cancel|pause|resume|
download` and `models list`, talking to the service over HTTP (cli/client.py).

`register(subparsers)` adds them to the argparse parser of cli/main.py; each leaf sets `fn(args) -> int`
(the process exit code). Every command takes --base-url/--api-key (or SGFT_API_URL/SGFT_API_KEY) and --json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import yaml

from cli.client import JSON, ApiError, Client, default_base_url
from rules.hparam_bounds import METHODS

TERMINAL = {"succeeded": 0, "failed": 1, "cancelled": 2}
JOB_FIELDS = ("model", "training_file", "validation_file", "suffix", "seed", "metadata", "resources")
Handler = Callable[[argparse.Namespace], int]


def _common() -> argparse.ArgumentParser:
    """Options every command accepts (a parent parser, so they can follow the sub-command)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--base-url", default=None, help="API root (default $SGFT_API_URL or http://$SGFT_HOST:$SGFT_PORT)"
    )
    p.add_argument("--api-key", default=None, help="API key (default $SGFT_API_KEY)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    return p


def _client(args: argparse.Namespace) -> Client:
    # `sgft` configures INFO logging for the servers; a client command's output stays its own.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return Client(base_url=args.base_url or default_base_url(), api_key=args.api_key)


def _run(handler: Handler) -> Handler:
    """Turn an ApiError or a bad input into a clear message on stderr and a non-zero exit code."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except ApiError as exc:
            if args.json and exc.body is not None:
                print(json.dumps(exc.body), file=sys.stdout)
            print(f"error: {exc}", file=sys.stderr)
            return 3 if exc.status in (0, 401, 403) else 4
        except (ValueError, OSError, yaml.YAMLError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 5
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapped


def _emit(args: argparse.Namespace, obj: Any, text: str) -> None:
    print(json.dumps(obj, indent=2) if args.json else text)


def _ago(ts: float | None) -> str:
    return "" if not ts else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def fmt_duration(seconds: float | None) -> str:
    """1h02m / 3m05s / 42s; '--' when unknown."""
    if seconds is None or seconds < 0:
        return "--"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
    ]
    return "\n".join(lines)


# files
@_run
def files_upload(args: argparse.Namespace) -> int:
    """Upload a JSONL dataset; a 400 prints the service's line-by-line problems."""
    path = Path(args.path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    with _client(args) as client:
        f = client.upload_file(path, purpose=args.purpose)
    _emit(args, f, f"{f['id']}  {f.get('filename')}  {f.get('bytes')} bytes  {f.get('status')}")
    return 0


@_run
def files_list(args: argparse.Namespace) -> int:
    """List the tenant's files."""
    with _client(args) as client:
        page = client.list_files()
    rows = [
        [
            f["id"],
            f.get("filename", ""),
            str(f.get("bytes", "")),
            f.get("purpose", ""),
            _ago(f.get("created_at")),
        ]
        for f in page.get("data", [])
    ]
    _emit(args, page, _table(rows, ["ID", "FILENAME", "BYTES", "PURPOSE", "CREATED"]))
    return 0


# jobs create
def parse_value(text: str) -> Any:
    """A hyper-parameter value from the command line: int, float, bool, "auto" or a string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def build_job_body(args: argparse.Namespace, upload: Callable[[Path], str]) -> JSON:
    """The POST /v1/fine_tuning/jobs body from --config (YAML) overlaid with flags.

    A training/validation file that names a local path is uploaded first (via `upload`), so
    `--training-file data.jsonl` works as well as `--training-file file-...`.
    """
    cfg: JSON = {}
    if args.config:
        loaded = yaml.safe_load(Path(args.config).read_text())
        if not isinstance(loaded, dict):
            raise ValueError(f"{args.config}: expected a YAML mapping of job fields")
        cfg = dict(loaded)
    hp: JSON = dict(cfg.pop("hyperparameters", None) or {})
    method_cfg = cfg.pop("method", None)
    method = method_cfg if isinstance(method_cfg, str) else (method_cfg or {}).get("type")
    if isinstance(method_cfg, dict):
        hp.update((method_cfg.get(method_cfg.get("type", ""), {}) or {}).get("hyperparameters", {}) or {})
    unknown = set(cfg) - set(JOB_FIELDS)
    if unknown:
        raise ValueError(f"{args.config}: unknown job fields {sorted(unknown)} (known: {list(JOB_FIELDS)})")
    for field in ("model", "training_file", "validation_file", "suffix", "seed"):
        value = getattr(args, field)
        if value is not None:
            cfg[field] = value
    for flag in ("n_epochs", "learning_rate_multiplier", "density", "batch_size"):
        value = getattr(args, flag)
        if value is not None:
            hp[flag] = parse_value(value)
    for item in args.hp or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--hp expects KEY=VALUE, got {item!r}")
        hp[key.strip()] = parse_value(value)
    if getattr(args, "devices", None) is not None:
        cfg["resources"] = {**(cfg.get("resources") or {}), "devices": args.devices}
    method = args.method or method or "sparsegrad"
    if method not in (*METHODS, "supervised"):
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not cfg.get("model"):
        raise ValueError("a model is required (--model or `model:` in --config); see `sgft models list`")
    if not cfg.get("training_file"):
        raise ValueError("a training file is required (--training-file file-... or a local .jsonl path)")
    for field in ("training_file", "validation_file"):
        value = cfg.get(field)
        if value and not str(value).startswith("file-"):
            path = Path(str(value)).expanduser()
            if not path.is_file():
                raise ValueError(f"{field} {value!r} is neither a file id (file-...) nor an existing file")
            cfg[field] = upload(path)
    body: JSON = {k: v for k, v in cfg.items() if v is not None}
    body["method"] = {"type": method, method: {"hyperparameters": hp}}
    return body


CONFIRM_ABOVE_SECONDS = 30 * 60


def estimate_line(est: JSON) -> str:
    """`estimate: 380 steps (10 epochs x batch 8) on 300 examples, about 35m04s (table of measured rates)`."""
    steps, epochs, batch = est.get("total_steps"), est.get("n_epochs"), est.get("batch_size")
    seconds = est.get("estimated_seconds")
    source = {"service": "this service's finished jobs", "table": "table of measured rates"}.get(
        str(est.get("throughput_source")), "no measured rate"
    )
    when = f"about {fmt_duration(seconds)}" if seconds is not None else "duration unknown"
    return (
        f"estimate: {steps if steps is not None else '?'} steps ({epochs} epochs x batch {batch}) on "
        f"{est.get('training_examples')} examples, {when} ({source})"
    )


def should_confirm(seconds: float | None, yes: bool, stdin_tty: bool, stdout_tty: bool) -> bool:
    """Ask before creating only on a terminal (stdin and stdout), above 30 minutes, without --yes: a script
    or a pipe is never prompted."""
    long = seconds is not None and seconds > CONFIRM_ABOVE_SECONDS
    return long and not yes and stdin_tty and stdout_tty


@_run
def jobs_create(args: argparse.Namespace) -> int:
    """Create a job (uploading local dataset paths first); optionally watch it."""
    with _client(args) as client:

        def upload(path: Path) -> str:
            f = client.upload_file(path)
            if not args.json:
                print(f"uploaded {path} as {f['id']}", file=sys.stderr)
            return str(f["id"])

        body = build_job_body(args, upload)
        est = client.estimate(body)
        if not args.json:
            print(estimate_line(est), file=sys.stderr)
        seconds = est.get("estimated_seconds")
        if should_confirm(seconds, args.yes, sys.stdin.isatty(), sys.stdout.isatty()):
            try:
                answer = input(f"This job is expected to take {fmt_duration(seconds)}. Create it? [y/N] ")
            except EOFError:
                answer = ""
            if answer.strip().lower() not in ("y", "yes"):
                print("not created", file=sys.stderr)
                return 1
        job = client.create_job(body, idempotency_key=args.idempotency_key)
        _emit(args, job, f"{job['id']}  {job['status']}  {job.get('model')}")
        if args.watch:
            return watch(client, job["id"], args.json, sys.stdout)
    return 0


# jobs list / get
def shown_status(job: JSON) -> str:
    """The status to show: "cancelling" / "pausing" while a running job has that request pending (the API's
    `stop_requested`; `status` stays "running" until the job stops at its next step)."""
    status = str(job.get("status"))
    pending = job.get("stop_requested")
    if status == "running" and pending in ("cancel", "pause"):
        return "cancelling" if pending == "cancel" else "pausing"
    return status


def _progress_text(job: JSON) -> str:
    prog = job.get("progress") or {}
    step, total = prog.get("step") or 0, prog.get("total_steps")
    if job.get("status") == "succeeded":
        return "100%"
    return f"{100 * step // total}% ({step}/{total})" if total else ""


@_run
def jobs_list(args: argparse.Namespace) -> int:
    """The tenant's jobs, newest first."""
    with _client(args) as client:
        page = client.list_jobs(limit=args.limit, status=args.status)
    rows = [
        [
            j["id"],
            shown_status(j),
            j.get("model", ""),
            (j.get("method") or {}).get("type", ""),
            _progress_text(j),
            fmt_duration((j.get("progress") or {}).get("seconds_remaining"))
            if j["status"] == "running"
            else "",
            _ago(j.get("created_at")),
        ]
        for j in page.get("data", [])
    ]
    _emit(args, page, _table(rows, ["ID", "STATUS", "MODEL", "METHOD", "PROGRESS", "ETA", "CREATED"]))
    return 0


@_run
def jobs_get(args: argparse.Namespace) -> int:
    """One job in full (JSON is the natural view of it)."""
    with _client(args) as client:
        job = client.get_job(args.id)
    print(json.dumps(job, indent=2))
    return 0


# jobs watch
def progress_line(job: JSON, width: int = 24) -> str:
    """`[#####-----]  42%  step 42/100  loss 0.5123  eta 1m05s  running` for one job snapshot."""
    prog, metrics = job.get("progress") or {}, job.get("metrics") or {}
    step, total = int(prog.get("step") or 0), prog.get("total_steps")
    frac = min(1.0, step / total) if total else (1.0 if job.get("status") == "succeeded" else 0.0)
    bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
    parts = [f"[{bar}] {100 * frac:3.0f}%", f"step {step}/{total if total else '?'}"]
    for key in ("train_loss", "valid_loss"):
        if isinstance(metrics.get(key), int | float):
            parts.append(f"{key.replace('_loss', ' loss')} {metrics[key]:.4f}")
    if job.get("status") == "running":
        parts.append(f"eta {fmt_duration(prog.get('seconds_remaining'))}")
    parts.append(shown_status(job))
    return "  ".join(parts)


def watch(client: Client, job_id: str, as_json: bool, out: TextIO, interval: float = 1.0) -> int:
    """Follow a job until it ends: a redrawn bar on a terminal, one line per event otherwise.

    Exit code 0 succeeded, 1 failed, 2 cancelled.
    """
    tty = out.isatty() and not as_json
    after: str | None = None
    last_line = ""
    while True:
        job = client.get_job(job_id)
        page = client.events(job_id, after=after)
        for ev in page.get("data", []):
            after = str(ev["id"])
            if as_json:
                print(json.dumps(ev), file=out)
            elif ev.get("type") != "metrics":
                msg = f"{_ago(ev.get('created_at'))}  {ev.get('level', 'info'):5}  {ev.get('message', '')}"
                print(("\r\x1b[2K" if tty else "") + msg, file=out)
            elif not tty:
                d = ev.get("data") or {}
                print(
                    "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items()),
                    file=out,
                )
        line = progress_line(job)
        if tty:
            print("\r\x1b[2K" + line, end="", file=out, flush=True)
        elif line != last_line and not as_json:
            print(line, file=out, flush=True)
        last_line = line
        status = job.get("status")
        if status in TERMINAL and not page.get("has_more"):
            if tty:
                print(file=out)
            if as_json:
                print(json.dumps(job), file=out)
            elif status == "failed":
                err = job.get("error") or {}
                print(f"job failed: [{err.get('code')}] {err.get('message')}", file=out)
            return TERMINAL[str(status)]
        if not page.get("has_more"):
            time.sleep(interval)


@_run
def jobs_watch(args: argparse.Namespace) -> int:
    """Follow a job; exit 0/1/2 for succeeded/failed/cancelled."""
    with _client(args) as client:
        return watch(client, args.id, args.json, sys.stdout, interval=args.interval)


@_run
def jobs_action(args: argparse.Namespace) -> int:
    """cancel / pause / resume; prints the state the request leads to (`cancelling` / `pausing` while a
    running job finishes its step, else the new status)."""
    with _client(args) as client:
        job = client.job_action(args.id, args.action)
    status = str(job["status"])
    note = (
        "  (stops at its next step; `sgft jobs watch` follows it)"
        if status in ("cancelling", "pausing")
        else ""
    )
    _emit(args, job, f"{job['id']}  {status}{note}")
    return 0


# jobs download
def _safe_name(name: str, fallback: str) -> str:
    base = Path(name or "").name
    return base if base not in ("", ".", "..") else fallback


@_run
def jobs_download(args: argparse.Namespace) -> int:
    """Download a succeeded job's results (the delta archive and metrics; --merged: the merged model)."""
    out_dir = Path(args.output or args.id)
    with _client(args) as client:
        job = client.get_job(args.id)
        if job.get("status") != "succeeded":
            raise ValueError(
                f"job {args.id} is {job.get('status')}; results exist only once it has succeeded"
            )
        if args.merged:
            ids = [_merged_file(client, job, args.timeout)]
        else:
            ids = [i for i in job.get("result_files") or [] if i != merged_id(job)]
        if not ids:
            raise ValueError(f"job {args.id} has no result files")
        out_dir.mkdir(parents=True, exist_ok=True)
        saved = []
        for file_id in ids:
            meta = client.get_file(file_id)
            target = out_dir / _safe_name(str(meta.get("filename", "")), file_id)
            with target.open("wb") as fh:
                n = client.download_file(file_id, fh)
            saved.append({"id": file_id, "path": str(target), "bytes": n})
            if not args.json:
                print(f"{target}  ({n} bytes)")
    if args.json:
        print(json.dumps({"job": args.id, "files": saved}, indent=2))
    return 0


def merged_id(job: JSON) -> str | None:
    """The merged model's file id: the service appends it to result_files when the merge succeeds."""
    files = job.get("result_files") or []
    return str(files[-1]) if job.get("merge_status") == "succeeded" and files else None


def _merged_file(client: Client, job: JSON, timeout: float) -> str:
    """Ask for the merged model (POST .../merge, a no-op once asked) and wait until it is ready."""
    deadline = time.monotonic() + timeout
    if job.get("merge_status") != "succeeded":
        job = client.job_action(job["id"], "merge")
    while True:
        state = job.get("merge_status")
        merged = merged_id(job)
        if merged:
            return merged
        if state == "failed":
            raise ValueError(f"merging job {job['id']} into its base model failed; see `sgft jobs watch`")
        if time.monotonic() > deadline:
            raise ValueError(
                f"the merged model of {job['id']} was not ready after {timeout:.0f}s (merge {state})"
            )
        time.sleep(2)
        job = client.get_job(job["id"])


@_run
def models_list(args: argparse.Namespace) -> int:
    """Base and fine-tuned models."""
    with _client(args) as client:
        page = client.list_models()
    rows = [[m["id"], m.get("owned_by", ""), str(m.get("task", ""))] for m in page.get("data", [])]
    _emit(args, page, _table(rows, ["ID", "OWNED BY", "TASK"]))
    return 0


def jobs_hyperparameters(args: argparse.Namespace) -> int:
    """Every hyper-parameter a job accepts (the service's table): range or choices, and what "auto" gives."""
    with _client(args) as client:
        table = client.hyperparameters()
    rows = []
    for p in table.get("data", []):
        bounds = f"[{p['minimum']:g}, {p['maximum']:g}]" if p.get("minimum") is not None else ""
        rows.append([p["name"], bounds or ", ".join(p.get("choices") or []) or p["kind"], p["auto"]])
    _emit(args, table, _table(rows, ["NAME", "RANGE", "AUTO"]))
    return 0


def register(subparsers: Any) -> None:
    """Add `files`, `jobs` and `models` to the `sgft` argparse sub-parsers (from cli/main.py)."""
    common = _common()
    files = subparsers.add_parser("files", help="upload and list datasets").add_subparsers(
        dest="files_cmd", required=True
    )
    p = files.add_parser("upload", parents=[common], help="upload a JSONL dataset")
    p.add_argument("path")
    p.add_argument("--purpose", default="fine-tune")
    p.set_defaults(fn=files_upload)
    files.add_parser("list", parents=[common], help="list files").set_defaults(fn=files_list)

    jobs = subparsers.add_parser("jobs", help="fine-tuning jobs").add_subparsers(
        dest="jobs_cmd", required=True
    )
    p = jobs.add_parser("create", parents=[common], help="create a fine-tuning job")
    p.add_argument("--config", help="a YAML file of job fields (flags override it)")
    p.add_argument("--model")
    p.add_argument("--training-file", help="file id, or a local JSONL path (uploaded first)")
    p.add_argument("--validation-file", help="file id, or a local JSONL path (uploaded first)")
    p.add_argument("--method", choices=METHODS)
    p.add_argument("--n-epochs")
    p.add_argument("--learning-rate-multiplier")
    p.add_argument("--density")
    p.add_argument("--batch-size")
    p.add_argument(
        "--hp", action="append", metavar="KEY=VALUE", help="any other hyper-parameter (repeatable)"
    )
    p.add_argument("--suffix")
    p.add_argument("--seed", type=int)
    p.add_argument("--devices", type=int, help="devices to train on (torchrun; docs/distributed.md)")
    p.add_argument("--idempotency-key")
    p.add_argument("--watch", action="store_true", help="follow the job after creating it")
    p.add_argument(
        "--yes", "-y", action="store_true", help="create without asking, even when expected above 30 minutes"
    )
    p.set_defaults(fn=jobs_create)
    p = jobs.add_parser("list", parents=[common], help="list jobs, newest first")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--status")
    p.set_defaults(fn=jobs_list)
    for name, func, helptext in (
        ("get", jobs_get, "show one job"),
        ("watch", jobs_watch, "follow a job live"),
    ):
        p = jobs.add_parser(name, parents=[common], help=helptext)
        p.add_argument("id")
        p.set_defaults(fn=func)
        if name == "watch":
            p.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    for action in ("cancel", "pause", "resume"):
        p = jobs.add_parser(action, parents=[common], help=f"{action} a job")
        p.add_argument("id")
        p.set_defaults(fn=jobs_action, action=action)
    help_hp = "list every hyper-parameter a job accepts (--hp KEY=VALUE)"
    jobs.add_parser("hyperparameters", parents=[common], help=help_hp).set_defaults(fn=jobs_hyperparameters)
    p = jobs.add_parser("download", parents=[common], help="download a job's results")
    p.add_argument("id")
    p.add_argument("-o", "--output", help="folder to write into (default: ./<job id>)")
    p.add_argument("--merged", action="store_true", help="the merged full model instead of the sparse delta")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for a merge")
    p.set_defaults(fn=jobs_download)

    models = subparsers.add_parser("models", help="models").add_subparsers(dest="models_cmd", required=True)
    models.add_parser("list", parents=[common], help="list models").set_defaults(fn=models_list)
    from cli import infer_commands

    infer_commands.register(subparsers, common)


def main(argv: list[str] | None = None) -> int:
    """Run the client commands alone (`python -m cli.commands jobs list`)."""
    parser = argparse.ArgumentParser(prog="sgft")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
