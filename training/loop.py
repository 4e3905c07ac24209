"""`run_training`: one explicit loop, top to bottom (nanoGPT style).

set up (training.setup) -> [evaluate at step 0] -> for each optimizer step: the step's examples in seeded
order, split into micro-batches (gradient accumulation), dynamically padded; lr = get_lr(step); forward under
the precision's autocast (training.precision: bf16 on CUDA by default) / backward, each micro-batch's mean
loss weighted by its share of the step's loss units (examples or learnt tokens), so accumulation equals one
big batch; optimizer step; hooks; evaluation every `eval_every` steps and at the end; checkpoint every
`checkpoint_every` steps; `should_stop` polled every step ("cancel"/"pause": checkpoint, return). Each
step's loss is watched for divergence, each better evaluation's delta kept (training.outcome). At the end:
the delta in work_dir/delta, the best evaluated step's under result_checkpoint "best", else the last one's.

On several processes (`world`, training.distributed) each rank takes its shard of every step's examples and
weights its micro-batches by the loss units of the whole step (summed over the ranks), so the averaged
gradient is the one-process gradient; rank 0 alone decides to stop, writes files and calls the hooks.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Literal

import torch

from training import checkpoint as ckpt
from training.data import collate, epoch_order, loss_units, micro_batches
from training.distributed import SINGLE, World, gathered
from training.hparams import Hyper, get_lr, in_use
from training.metrics import evaluate
from training.outcome import BEST_DELTA, DivergenceWatch, kept_message, majority_warning, save_best
from training.setup import Run, build_run
from training.spec import Hooks, JobSpec, OutOfMemory, StepInfo, StopReason, TrainingError, TrainResult

KEEP_CHECKPOINTS = 2
CHECKPOINT_DELTA = "delta"  # a checkpoint folder's servable delta at its step


@contextmanager
def guard(hp: Hyper, what: str) -> Iterator[None]:
    """Turn out-of-memory and runtime failures of model code into TrainingErrors a person can act on."""
    try:
        yield
    except (torch.cuda.OutOfMemoryError, MemoryError) as exc:
        raise OutOfMemory(
            f"out of memory during {what} (batch_size={hp.batch_size}, gradient_accumulation_steps="
            f"{hp.gradient_accumulation_steps}, max_seq_length={hp.max_seq_length}); lower batch_size, raise "
            "gradient_accumulation_steps or lower max_seq_length"
        ) from exc
    except TrainingError:
        raise
    except RuntimeError as exc:
        raise TrainingError(f"training failed during {what}: {exc}") from exc


def _eval_batches(run: Run) -> list[dict[str, torch.Tensor]]:
    """Validation batches sorted by length (less padding; metrics are sums, so order does not matter)."""
    size = min(64, max(16, run.hp.batch_size * 2))
    items = sorted(run.valid, key=lambda e: len(e.input_ids))
    return [collate(items[i : i + size], run.pad_id, run.task) for i in range(0, len(items), size)]


def _write_metrics(work_dir: Path, history: list[dict[str, float]], start: int = 0) -> int:
    """Append history[start:] to work_dir/metrics.jsonl (start=0 rewrites it); returns the rows written."""
    with (work_dir / "metrics.jsonl").open("a" if start else "w") as fh:
        fh.writelines(json.dumps(row) + "\n" for row in history[start:])
    return len(history)


def _round_delta(run: Run) -> None:
    """The model made exactly base + the delta as written (hp.delta_dtype): before every evaluation (on
    every rank: they stay equal) and before the result is written, so that a metric is always the
    downloaded delta's. A checkpoint between evaluations writes its delta rounded, the model goes on as is."""
    run.method.round_delta(run.prepared.optimizer, run.hp.delta_dtype)


def _write_delta(run: Run, out: Path, full: dict[str, torch.Tensor] | None = None) -> Path:
    extra = {
        "max_seq_length": run.hp.max_seq_length,
        "seed": run.spec.seed,
        "lora_rank": run.prepared.lora_rank,
    }
    return run.method.save_delta(
        run.prepared.model, out, run.task, run.label_names, run.spec.model, extra, full, run.hp.delta_dtype
    )


def _checkpoint(run: Run, work_dir: Path, hooks: Hooks) -> Path:
    folder = work_dir / "checkpoints" / f"step-{run.step}"
    model = run.prepared.model
    best = work_dir / BEST_DELTA
    ckpt.save_checkpoint(
        folder,
        run.method.trainable_state(model),
        run.prepared.optimizer,
        run.prepared.basis,
        run.position_state(),
        best if best.is_dir() else None,
    )
    _write_delta(run, folder / CHECKPOINT_DELTA)  # what serving a checkpoint by name loads (`…:ckpt-step-N`)
    older = sorted((work_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    for old in older[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    if hooks.on_checkpoint:  # the event reports the delta's size beside the last evaluation
        stats = run.method.delta_stats(model, run.hp.delta_dtype)
        hooks.on_checkpoint(run.step, folder, {**run.last_eval, **stats})
    return folder


def _evaluate(run: Run, hooks: Hooks, eval_batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    _round_delta(run)
    with guard(run.hp, f"evaluation at step {run.step}"):
        metrics = evaluate(
            run.prepared.model, eval_batches, run.task, run.num_labels, run.device, run.autocast
        )
    run.last_eval = metrics
    run.history.append({"step": run.step, **metrics})
    if hooks.on_eval:
        hooks.on_eval(run.step, dict(metrics))
    return metrics


def run_training(
    spec: JobSpec,
    train_file: Path,
    valid_file: Path | None,
    work_dir: Path,
    hooks: Hooks | None = None,
    resume_from: Path | None = None,
    models_dir: Path | None = None,
    precision: str = "auto",
    memory_budget: int | None = None,
    world: World = SINGLE,
    sharding: str = "none",
) -> TrainResult:
    """Train `spec` on the JSONL files; see the module docstring. Raises TrainingError subclasses.
    `precision`: fp32 | bf16 | bf16-weights | auto (training.precision); `memory_budget`: bytes SparseGrad's
    auto choices must fit (training.budget; None: the device's memory). `world`: this process's rank when
    torchrun runs the job on several (training.distributed.init_world); rank 0 alone calls `hooks`;
    `sharding` "fsdp" shards the model over them (FSDP2; no checkpoints, the last step is the result)."""
    hooks = hooks or Hooks()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)

    def say(message: str) -> None:
        if hooks.on_message:
            hooks.on_message(message)

    with _guard_setup():
        run = build_run(
            spec,
            Path(train_file),
            Path(valid_file) if valid_file else None,
            models_dir,
            resume_from,
            say,
            precision,
            memory_budget,
            world,
            sharding,
        )
    hp, model, optimizer = run.hp, run.prepared.model, run.prepared.optimizer
    total = hp.total_steps
    if hooks.on_resolved:
        hooks.on_resolved(in_use(hp, run.task, spec.method, run.prepared.lora_rank))
    watch = DivergenceWatch(hp.learning_rate, run.history)
    keep_best = hp.result_checkpoint == "best"
    if resume_from is not None and (Path(resume_from) / BEST_DELTA).is_dir():
        shutil.copytree(Path(resume_from) / BEST_DELTA, work_dir / BEST_DELTA, dirs_exist_ok=True)
    warmup = round(hp.warmup_ratio * total)
    eval_batches = _eval_batches(run) if run.valid else []
    say(
        f"Training {spec.model} with {spec.method}: {total} steps of {hp.batch_size} examples, "
        f"lr {hp.learning_rate:g}, {run.prepared.trainable_parameters:,} trainable parameters"
    )
    if eval_batches and hp.eval_at_start and run.step == 0:
        _evaluate(run, hooks, eval_batches)
    written = _write_metrics(work_dir, run.history) if world.main else 0
    last_ckpt: Path | None = resume_from if resume_from is not None else None
    order = epoch_order(len(run.train), spec.seed, run.epoch)
    model.train()
    started, session_steps, session_tokens = time.perf_counter(), 0, 0
    stop = _agree_stop(run, hooks) if run.step < total else None
    checkpoints = world.main and not run.sharded
    if stop is not None and checkpoints:
        last_ckpt = _checkpoint(run, work_dir, hooks)
    early_stopped = False
    while stop is None and run.step < total and not early_stopped:
        if run.index >= len(run.train):  # next epoch: a fresh permutation from (seed, epoch)
            run.epoch, run.index = run.epoch + 1, 0
            order = epoch_order(len(run.train), spec.seed, run.epoch)
        step_ids = order[run.index : run.index + hp.batch_size]
        mine = world.shard(step_ids)  # all of them on one process
        run.index += hp.batch_size
        # a rank left without examples (an epoch's short last step) still takes part, with weight 0
        weight = 1 if mine else 0
        micro = micro_batches(
            run.train, mine or step_ids[:1], 0, len(mine or step_ids[:1]), hp.gradient_accumulation_steps
        )
        batches = [collate(m, run.pad_id, run.task) for m in micro]
        units = [loss_units(b, run.task) * weight for b in batches]
        (step_units,) = world.sum([sum(units)])
        scale = get_lr(run.step, 1.0, warmup, total, hp.lr_scheduler)
        lr = hp.learning_rate * scale
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * scale
        loss_sum = 0.0
        with guard(run.hp, f"step {run.step + 1}"):
            for i, (batch, n) in enumerate(zip(batches, units, strict=True)):
                batch = {k: v.to(run.device) for k, v in batch.items()}
                with _accumulating(run, i < len(batches) - 1):
                    with run.autocast():
                        loss = run.trainer(**batch).loss  # mean over this micro-batch's examples / tokens
                    # gradients are averaged over the ranks: times world.size makes them the global sum
                    (loss * (n * world.size / max(step_units, 1))).backward()
                loss_sum += float(loss.detach()) * n
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        run.step += 1
        mine_tokens = sum(int(b["attention_mask"].sum()) for b in batches) * weight
        loss_sum, tokens_f = world.sum([loss_sum, mine_tokens])
        train_loss = loss_sum / max(step_units, 1)
        watch.check(run.step, train_loss)
        tokens = int(tokens_f)
        run.trained_tokens += tokens
        session_steps, session_tokens = session_steps + 1, session_tokens + tokens
        elapsed = time.perf_counter() - started
        run.history.append({"step": run.step, "train_loss": train_loss, "learning_rate": lr})
        if hooks.on_step:
            hooks.on_step(
                StepInfo(
                    step=run.step,
                    total_steps=total,
                    epoch=run.epoch + min(run.index, len(run.train)) / len(run.train),
                    loss=train_loss,
                    learning_rate=lr,
                    tokens_per_second=session_tokens / max(elapsed, 1e-9),
                    eta_seconds=elapsed / session_steps * (total - run.step),
                    trained_tokens=run.trained_tokens,
                )
            )
        if eval_batches and (run.step % hp.eval_every == 0 or run.step == total):
            metrics = _evaluate(run, hooks, eval_batches)
            if run.best_loss is None or metrics["valid_loss"] < run.best_loss:
                run.best_loss, run.bad_evals = metrics["valid_loss"], 0
                run.best_step, run.best_eval = run.step, dict(metrics)
                if keep_best and run.step < total and world.main:  # the last step's is written at the end
                    save_best(work_dir, lambda out: _write_delta(run, out))
            else:
                run.bad_evals += 1
            if 0 < hp.early_stopping_patience <= run.bad_evals and run.step < total:
                say(f"Early stopping at step {run.step}: no better valid_loss in {run.bad_evals} evaluations")
                early_stopped = True
        if world.main:
            written = _write_metrics(work_dir, run.history, written)
        finished = run.step >= total or early_stopped
        if not finished:
            stop = _agree_stop(run, hooks)
        if checkpoints and (stop is not None or (run.step % hp.checkpoint_every == 0 and not finished)):
            last_ckpt = _checkpoint(run, work_dir, hooks)
    train_loss_now = next((r["train_loss"] for r in reversed(run.history) if "train_loss" in r), float("nan"))
    if stop is not None:
        metrics = {**run.last_eval, "train_loss": train_loss_now}
        metrics["trainable_parameters"] = float(run.prepared.trainable_parameters)
        status: Literal["cancelled", "paused"] = "cancelled" if stop == "cancel" else "paused"
        saved = f"; checkpoint saved at step {run.step}" if last_ckpt is not None else ""
        say(f"Stopped ({status}) at step {run.step}{saved}")
        return TrainResult(status, run.step, total, run.trained_tokens, metrics, None, last_ckpt, run.history)
    with gathered(model, run.sharded) as full:  # a sharded model's weights, whole (every rank takes part)
        if not world.main:  # rank 0 writes the result
            return TrainResult("completed", run.step, total, run.trained_tokens, {}, None, None, run.history)
        delta, kept, kept_eval = _result(run, work_dir, say, bool(eval_batches), full)
    metrics = {**kept_eval, "train_loss": train_loss_now, "result_step": float(kept)}
    metrics["trainable_parameters"] = float(run.prepared.trainable_parameters)
    say(f"Training finished at step {run.step}; delta written")
    warnings = []
    if run.task == "classification" and run.label_names:
        warning = majority_warning(run.valid, run.label_names, kept_eval)
        if warning:
            warnings.append(warning)
            (hooks.on_warning or say)(warning)
    final_ckpt = last_ckpt if last_ckpt is not None and last_ckpt.name == f"step-{run.step}" else None
    return TrainResult(
        "completed",
        run.step,
        total,
        run.trained_tokens,
        metrics,
        delta,
        final_ckpt,
        run.history,
        result_step=kept,
        warnings=warnings,
    )


def _result(
    run: Run,
    work_dir: Path,
    say: Callable[[str], None],
    evaluated: bool,
    full: dict[str, torch.Tensor] | None = None,
) -> tuple[Path, int, dict[str, float]]:
    """Write the result delta (the best step's under result_checkpoint "best", else the last) and say which
    step it holds; returns (delta folder, step, that step's validation metrics)."""
    out, best_dir = work_dir / "delta", work_dir / BEST_DELTA
    best, last_loss = run.best_step, run.last_eval.get("valid_loss")
    mode = run.hp.result_checkpoint
    if mode == "best" and best is not None and best != run.step and best_dir.is_dir():
        shutil.rmtree(out, ignore_errors=True)
        best_dir.rename(out)
        assert last_loss is not None
        say(kept_message(mode, run.step, last_loss, best, run.best_loss))
        return out, best, dict(run.best_eval)
    shutil.rmtree(best_dir, ignore_errors=True)
    _round_delta(run)  # training is over (a no-op after the last step's evaluation)
    delta = _write_delta(run, out, full)
    if mode == "best" and best is not None and best != run.step:
        say(
            f"Kept the last step ({run.step}) as the result: the weights of the best step ({best}) were not "
            "in the checkpoint this run resumed from"
        )
    elif evaluated and last_loss is not None:
        say(kept_message(mode, run.step, last_loss, best, run.best_loss))
    return delta, run.step, dict(run.last_eval)


def _agree_stop(run: Run, hooks: Hooks) -> StopReason | None:
    """The stop request (polled by rank 0, the one with hooks) that every rank acts on at the same step."""
    asked = hooks.should_stop() if hooks.should_stop else None
    return run.world.agree(asked)  # type: ignore[return-value]


def _accumulating(run: Run, more: bool) -> AbstractContextManager[object]:
    """DDP's no_sync for every micro-batch but a step's last: one gradient all-reduce per step."""
    if more and run.ddp is not None:
        return run.ddp.no_sync()  # type: ignore[operator, no-any-return]
    return nullcontext()


@contextmanager
def _guard_setup() -> Iterator[None]:
    try:
        yield
    except (torch.cuda.OutOfMemoryError, MemoryError) as exc:
        raise OutOfMemory(
            "out of memory while loading the model or computing the SparseGrad basis; lower batch_size or "
            "basis_steps, or use a smaller model"
        ) from exc
