"""The rank entry point: `torchrun --nproc-per-node N -m training.launch run.json…` trains one job on N
processes (each run file in turn, in one process group); any launcher that sets torchrun's environment works
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

`run.json` holds what `run_training` takes: {"spec": {model, method, task, hyperparameters, seed}, "train",
"valid", "work_dir", "resume_from", "models_dir", "precision", "memory_budget", "result"}. Every rank trains;
rank 0 alone calls the hooks and writes `result` (JSON): {"result": TrainResult} or {"error": {"type",
"code", "message", "param"}}. Each rank exits when the process that started it dies
(training.distributed.die_with_parent). The worker adds its database hooks through `worker.rank`.
"""

from __future__ import annotations

import faulthandler
import gc
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

from training.distributed import World, close_world, die_with_parent, init_world
from training.loop import run_training
from training.spec import Hooks, JobSpec, TrainingError, TrainResult

HooksFor = Callable[[dict[str, Any]], Hooks]  # rank 0's hooks, from the run file


def torchrun_command(
    python: str,
    module: str,
    run_files: Sequence[Path],
    nproc: int,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
    rdzv_id: str = "sgft",
    agent: str = "torch.distributed.run",
) -> list[str]:
    """The torchrun command line of one node of a job: standalone on one node, else c10d rendezvous at
    `rdzv_endpoint` (host:port) with `nnodes` agents. `agent`: the module that runs torchrun's main."""
    cmd = [python, "-m", agent, f"--nproc-per-node={nproc}"]
    if nnodes == 1 and rdzv_endpoint is None:
        cmd += ["--standalone"]
    else:
        cmd += [
            f"--nnodes={nnodes}",
            f"--node-rank={node_rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rdzv_endpoint}",
            f"--rdzv-id={rdzv_id}",
        ]
    return [*cmd, "--max-restarts=0", "-m", module, *map(str, run_files)]


def result_json(result: TrainResult) -> dict[str, Any]:
    out = asdict(result)
    for key in ("delta_dir", "checkpoint_dir"):
        out[key] = str(out[key]) if out[key] is not None else None
    return out


def result_from_json(data: dict[str, Any]) -> TrainResult:
    data = dict(data)
    for key in ("delta_dir", "checkpoint_dir"):
        data[key] = Path(data[key]) if data[key] is not None else None
    return TrainResult(**data)


def run_files(paths: Sequence[Path], hooks_for: HooksFor | None = None) -> int:
    """Train the runs described in `paths`, one after the other, as this process's rank; returns the exit
    status (an exception ends the process: torchrun then stops the other ranks)."""
    faulthandler.enable()  # a native abort (SIGABRT, SIGSEGV) prints every thread's Python stack to stderr
    die_with_parent()
    world = init_world()
    try:
        for path in paths:
            config = json.loads(Path(path).read_text())
            out = Path(config["result"])
            try:
                hooks = hooks_for(config) if hooks_for is not None and world.main else Hooks()
                result = _train(config, world, hooks)
            except BaseException as exc:
                if world.main:
                    _write(out, {"error": _error(exc)})
                raise
            if world.main:
                _write(out, {"result": result_json(result)})
        world.barrier()  # every rank done (rank 0 wrote its files) before the group goes down
    finally:
        gc.collect()  # the DDP/FSDP wrappers (and the reducer holding the group) go before the group does
        close_world(world)
    return 0


def exit_rank(status: int) -> NoReturn:
    """End a rank without the interpreter's teardown: once the group is destroyed and the files written,
    nothing is left to run, and finalising native threads (gloo, the reducer) has aborted a rank that had
    finished (SIGABRT), which torchrun reports as a failed job."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _train(config: dict[str, Any], world: World, hooks: Hooks) -> TrainResult:
    spec = JobSpec(**config["spec"])
    optional = {k: config.get(k) for k in ("valid", "resume_from", "models_dir")}
    return run_training(
        spec,
        Path(config["train"]),
        Path(optional["valid"]) if optional["valid"] else None,
        Path(config["work_dir"]),
        hooks=hooks,
        resume_from=Path(optional["resume_from"]) if optional["resume_from"] else None,
        models_dir=Path(optional["models_dir"]) if optional["models_dir"] else None,
        precision=config.get("precision", "auto"),
        memory_budget=config.get("memory_budget"),
        world=world,
        sharding=config.get("sharding", "none"),
    )


def _error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, TrainingError):
        return {"type": type(exc).__name__, "code": exc.code, "message": exc.message, "param": exc.param}
    return {"type": type(exc).__name__, "code": None, "message": str(exc)[:2000], "param": None}


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: torchrun … -m training.launch RUN.json [RUN.json …]", file=sys.stderr)
        return 2
    return run_files([Path(a) for a in args])


if __name__ == "__main__":
    exit_rank(main())
