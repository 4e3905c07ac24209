"""`sgft`: serve the API, run workers and the reaper, migrate, manage keys, or `run` everything at once."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from types import FrameType

from core.settings import get_settings

log = logging.getLogger("sgft")


def cmd_migrate(_args: argparse.Namespace) -> int:
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from migrations import upgrade

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    print(f"database at revision head: {settings.database_url.split('@')[-1]}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = get_settings()
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=args.workers,  # one process per core is what a CPU-bound API wants (uvloop + httptools)
        access_log=args.access_log,
        log_level="info",
        timeout_graceful_shutdown=5,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = get_settings()
    queues = ",".join(settings.worker_queue_names(args.queues or settings.worker_queues))
    from worker.celery_app import app
    from worker.scratch import sweep

    try:
        sweep(settings)
    except Exception as exc:  # the database may not be up yet: the next start sweeps
        logging.getLogger(__name__).warning("scratch sweep skipped: %s", exc)
    app.worker_main(
        [
            "worker",
            "--queues",
            queues,
            "--concurrency",
            str(args.concurrency),
            "--max-tasks-per-child",
            "1",
            "--prefetch-multiplier",
            "1",
            "--loglevel",
            args.loglevel,
            "--hostname",
            f"sgft-{uuid.uuid4().hex[:6]}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    """The inference server (worker.infer_server): the API proxies chat, completions and predictions to it."""
    import uvicorn

    settings = get_settings()
    uvicorn.run(
        "worker.infer_server:create_infer_app",
        factory=True,
        host=args.host or settings.infer_host,
        port=args.port or settings.infer_port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    return 0


def cmd_reaper(_args: argparse.Namespace) -> int:
    from worker.reaper import run_forever

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    run_forever(get_settings(), stop)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from core.db import require_schema, session_scope
    from core.keys import create_key, revoke_key

    settings = get_settings()
    require_schema(settings.database_url)  # before connecting: a missing SQLite file is never created
    with session_scope(settings.database_url) as session:
        if args.keys_cmd == "create":
            row, plain = create_key(session, args.tenant, settings.secret_key)
            print(plain)
            print(f"(key {row.id} for tenant {args.tenant!r}; shown once, store it now)", file=sys.stderr)
            return 0
        if revoke_key(session, args.key):
            print(f"revoked {args.key}")
            return 0
        print(f"no live key {args.key!r}", file=sys.stderr)
        return 1


def cmd_run(_args: argparse.Namespace) -> int:
    """The embedded default: migrate, then API + worker + reaper as children; Ctrl-C stops them all."""
    settings = get_settings()
    os.environ["SGFT_DATA_DIR"] = str(settings.data_dir)
    cmd_migrate(_args)
    me = [sys.executable, "-m", "cli.main"]
    # Own sessions: a terminal Ctrl-C reaches only this process, which stops the children in order.
    children = {
        "api": subprocess.Popen(
            [*me, "serve"], start_new_session=True, preexec_fn=_die_with_parent(signal.SIGTERM)
        ),
        "worker": subprocess.Popen(
            [*me, "worker"], start_new_session=True, preexec_fn=_die_with_parent(signal.SIGQUIT)
        ),
        "reaper": subprocess.Popen(
            [*me, "reaper"], start_new_session=True, preexec_fn=_die_with_parent(signal.SIGTERM)
        ),
        "infer": subprocess.Popen(
            [*me, "infer"], start_new_session=True, preexec_fn=_die_with_parent(signal.SIGTERM)
        ),
    }
    url = f"http://{settings.host}:{settings.port}"
    print(
        f"\nsgft is starting at {url}  (API docs: {url}/docs)\n"
        f"data: {settings.data_dir}\n"
        "get an API key:  sgft keys create --tenant me\n"
        "stop: Ctrl-C\n",
        flush=True,
    )
    stopping = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    code = 0
    while not stopping.is_set():
        dead = [name for name, p in children.items() if p.poll() is not None]
        if dead:
            print(f"sgft: {', '.join(dead)} exited; stopping the rest", file=sys.stderr)
            code = 1
            break
        stopping.wait(0.5)
    _shutdown(children)
    return code


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    """On Linux, have the kernel send `sig` to a child when `sgft run` dies (even by SIGKILL)."""
    if not sys.platform.startswith("linux"):
        return None

    def set_pdeathsig() -> None:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, int(sig), 0, 0, 0)

    return set_pdeathsig


def _shutdown(children: dict[str, subprocess.Popen[bytes]]) -> None:
    # The worker gets SIGQUIT (Celery's cold shutdown): a running job is interrupted, its heartbeat goes
    # stale, and the reaper re-queues it from its last checkpoint on the next start.
    for name, proc in children.items():
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT if name == "worker" else signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in children.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print("sgft: stopped", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sgft", description=__doc__)
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error (or set SGFT_DEBUG=1)"
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser(
        "run", help="migrate, then run API + worker + reaper + inference server (Ctrl-C stops all)"
    ).set_defaults(fn=cmd_run)
    serve = sub.add_parser("serve", help="run the API (uvicorn)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, default=1, help="API processes (default 1; one per core)")
    serve.add_argument(
        "--no-access-log", dest="access_log", action="store_false", help="no log line per request (saves CPU)"
    )
    serve.set_defaults(fn=cmd_serve)
    worker = sub.add_parser("worker", help="run a Celery worker (one job per child process)")
    worker.add_argument("--queues", help="comma list of cpu,gpu (default SGFT_WORKER_QUEUES)")
    worker.add_argument("--concurrency", type=int, default=1)
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(fn=cmd_worker)
    infer = sub.add_parser("infer", help="run the inference server (chat, completions, predictions)")
    infer.add_argument("--host")
    infer.add_argument("--port", type=int)
    infer.set_defaults(fn=cmd_infer)
    sub.add_parser("reaper", help="re-queue jobs of dead workers, re-send lost messages").set_defaults(
        fn=cmd_reaper
    )
    sub.add_parser("migrate", help="alembic upgrade head").set_defaults(fn=cmd_migrate)
    keys = sub.add_parser("keys", help="API keys")
    keys_sub = keys.add_subparsers(dest="keys_cmd", required=True)
    create = keys_sub.add_parser("create", help="create a key (and the tenant) and print it")
    create.add_argument("--tenant", required=True)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id or prefix")
    revoke.add_argument("key")
    keys.set_defaults(fn=cmd_keys)
    from cli import commands  # files / jobs / models: the HTTP client commands

    commands.register(sub)
    return parser


def describe_error(exc: BaseException) -> str:
    """One line for an error that ended a command: its message, without SQL, parameters or links."""
    orig = getattr(exc, "orig", None)  # a SQLAlchemy DBAPIError: the driver's own message is the useful part
    text = str(orig if isinstance(orig, BaseException) else exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(orig if isinstance(orig, BaseException) else exc).__name__}: {first}".rstrip(": ")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sgft` command. An error is one line on stderr and exit code 1; `--debug` or
    SGFT_DEBUG=1 shows its traceback instead."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("SGFT_DEBUG", "").strip().lower() in ("1", "true", "yes")
    try:
        return int(args.fn(args))
    except KeyboardInterrupt:
        print("sgft: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        from core.db import DatabaseNotReady

        if isinstance(exc, DatabaseNotReady):  # says what to do; a traceback would not help
            print(f"sgft: error: {exc}", file=sys.stderr)
            return 1
        print(f"sgft: error: {describe_error(exc)}", file=sys.stderr)
        print("(run `sgft --debug ...` or set SGFT_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
