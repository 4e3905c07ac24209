"""Everything before the first step: check files, resolve hyper-parameters, tokenise, load, apply the method,
and (on resume) restore trainable state, optimizer and position from a checkpoint."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from rules.datasets import TASK_OF_FORMAT
from training import checkpoint as ckpt
from training.budget import device_memory, fit_to_budget
from training.data import (
    Encoded,
    LabelMap,
    check_files,
    collate,
    encode_records,
    first_micro_batches,
    read_records,
)
from training.distributed import SHARDINGS, SINGLE, World, wrap_ddp
from training.hparams import Hyper, is_auto, resolve
from training.methods import REGISTRY, Method, Prepared
from training.models import load_model, load_tokenizer, max_positions, registry_entry
from training.precision import Precision, resolve_precision, set_storage
from training.spec import DataError, HyperparameterError, JobSpec, TrainingError


@dataclass
class Run:
    """A job ready to train (or to continue): model, optimizer, data, position, bookkeeping."""

    spec: JobSpec
    task: str
    hp: Hyper
    labels: LabelMap | None
    tokenizer: PreTrainedTokenizerBase
    train: list[Encoded]
    valid: list[Encoded]
    prepared: Prepared
    device: torch.device
    autocast: Callable[[], AbstractContextManager[Any]]
    fingerprint: str
    frozen_dtype: torch.dtype = torch.float32  # storage of the weights that do not train (precision)
    step: int = 0
    epoch: int = 0
    index: int = 0  # examples of `epoch`'s permutation already consumed
    trained_tokens: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_loss: float | None = None
    bad_evals: int = 0
    best_step: int | None = None  # the evaluated step (>= 1) of lowest valid_loss
    best_eval: dict[str, float] = field(default_factory=dict)  # its metrics
    last_eval: dict[str, float] = field(default_factory=dict)
    world: World = SINGLE  # this process's rank among the job's processes (training.distributed)
    ddp: torch.nn.Module | None = None  # the DistributedDataParallel wrapper that trains, on several ranks
    sharded: bool = False  # FSDP2: the model's parameters are shards (training.distributed.shard_model)

    @property
    def trainer(self) -> torch.nn.Module:
        """The module a training step calls: DDP's wrapper on several ranks, else the model."""
        return self.ddp if self.ddp is not None else self.prepared.model

    @property
    def method(self) -> Method:
        """The job's method object (training.methods.REGISTRY)."""
        return REGISTRY[self.spec.method]

    @property
    def label_names(self) -> list[str] | None:
        return None if self.labels is None or self.labels.kind == "float" else self.labels.names

    @property
    def num_labels(self) -> int:
        return self.labels.num_labels if self.labels is not None else 0

    @property
    def pad_id(self) -> int:
        return run_pad(self.tokenizer)

    def position_state(self) -> dict[str, Any]:
        """The JSON part of a checkpoint (see training.checkpoint)."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "index": self.index,
            "trained_tokens": self.trained_tokens,
            "history": self.history,
            "best_loss": self.best_loss,
            "bad_evals": self.bad_evals,
            "best_step": self.best_step,
            "best_eval": self.best_eval,
            "last_eval": self.last_eval,
            "hyper": self.hp.to_dict(),
            "run": self.identity(),
        }

    def identity(self) -> dict[str, Any]:
        return {
            "model": self.spec.model,
            "method": self.spec.method,
            "task": self.task,
            "seed": self.spec.seed,
            "data": self.fingerprint,
            "frozen_weights": str(self.frozen_dtype).removeprefix("torch."),
        }


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _fingerprint(*paths: Path | None) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes() if path is not None else b"-")
    return h.hexdigest()


def build_run(
    spec: JobSpec,
    train_file: Path,
    valid_file: Path | None,
    models_dir: Path | None,
    resume_from: Path | None,
    say: Callable[[str], None],
    precision: str = "auto",
    memory_budget: int | None = None,
    world: World = SINGLE,
    sharding: str = "none",
) -> Run:
    """Set a job up; on `resume_from`, continue exactly where that checkpoint stopped. On several ranks
    (`world`) every rank sets up the same run; the basis batches are dealt out round-robin."""
    if spec.method not in REGISTRY:
        known = tuple(REGISTRY)
        raise HyperparameterError(f"method must be one of {known}, got {spec.method!r}", param="method")
    method = REGISTRY[spec.method]
    train_report, _ = check_files(train_file, valid_file)
    assert train_report.format is not None
    entry = registry_entry(spec.model, models_dir)
    data_task = TASK_OF_FORMAT[train_report.format]
    task = spec.task or entry.task
    if task != entry.task or data_task != task:
        raise DataError(
            f"the training file holds {train_report.format} data (a {data_task} task) but model "
            f"{entry.name!r} is a {entry.task} model; use matching data or another model",
            param="training_file",
        )
    state = _read_resume(resume_from) if resume_from is not None else None
    hp = resolve(
        spec.hyperparameters,
        train_report.examples,
        task,
        spec.method,
        max_positions(entry),
        validation=valid_file is not None,
        devices=world.size if world.active else 1,
    )
    if world.active and spec.library.get("basis_probe_steps"):
        raise HyperparameterError(
            "basis_probe_steps is not available on several devices (the head fit would differ per device)",
            param="basis_probe_steps",
        )
    if sharding not in SHARDINGS:
        raise HyperparameterError(f"sharding must be one of {SHARDINGS}, got {sharding!r}", param="sharding")
    sharded = world.active and sharding == "fsdp"
    if sharded and resume_from is not None:  # a checkpoint of a DDP attempt: sharded runs cannot load one
        say("Resuming from a checkpoint: this attempt runs with DDP, not FSDP sharding (no sharded resume)")
        sharded = False
    if sharded and hp.result_checkpoint == "best":
        say("FSDP sharding keeps no best step's weights: the result is the last step's delta")
        hp = dataclasses.replace(hp, result_checkpoint="last")
    seed_all(spec.seed)
    labels = None
    if task == "classification":
        labels = LabelMap(str(train_report.label_kind), list(train_report.labels))
    tokenizer = load_tokenizer(entry)
    train = encode_records(
        read_records(train_file), task, tokenizer, hp.max_seq_length, labels, "training file"
    )
    valid = []
    if valid_file is not None:
        valid = encode_records(
            read_records(valid_file), task, tokenizer, hp.max_seq_length, labels, "validation file"
        )
    cut = sum(e.truncated for e in train)
    if cut:
        say(
            f"{cut} of {len(train)} training examples are longer than max_seq_length="
            f"{hp.max_seq_length} and were cut"
        )
    try:
        prec = resolve_precision(precision)
    except ValueError as exc:
        raise HyperparameterError(str(exc), param="precision") from exc
    device = prec.device
    regression = labels is not None and labels.kind == "float"
    names = labels.names if labels and not regression else None
    # a method that trains every weight (full): they load (and stay) in float32 whatever the precision
    load_dtype = torch.float32 if method.float32_weights else prec.frozen_dtype
    model = load_model(entry, task, names, regression, load_dtype)
    model.config.pad_token_id = tokenizer.pad_token_id  # type: ignore[union-attr]
    model.to(device)
    if method.basis:
        hp = _fit_memory(spec, hp, model, prec, memory_budget, state, say)
    cfg = method.config(hp, task, names, spec.model, spec.library)
    basis = ckpt.load_basis(resume_from) if resume_from is not None else None
    basis_batches = None
    if method.basis and basis is None:
        say(f"Computing the SparseGrad basis from {hp.basis_steps} gradient steps")
        micro = max(1, hp.batch_size // hp.gradient_accumulation_steps)
        chunks = first_micro_batches(train, spec.seed, hp.basis_steps, micro)
        basis_batches = [collate(c, run_pad(tokenizer), task) for c in chunks][world.rank :: world.size]
    try:
        with prec.autocast():
            prepared = method.prepare(model, hp, cfg, basis_batches, basis, world, sharded)
    except (ValueError, KeyError) as exc:
        raise HyperparameterError(f"could not apply {spec.method} to {spec.model!r}: {exc}") from exc
    frozen = set_storage(prepared.model, prec.frozen_dtype)
    dtype = str(prec.frozen_dtype).removeprefix("torch.")
    say(
        f"Precision {prec.name} on {device.type}: "
        + ("bf16 autocast, " if prec.autocast_dtype is not None else "")
        + f"frozen weights stored in {dtype} ({frozen / 2**20:,.1f} MiB), trainable ones in float32"
    )
    run = Run(
        spec,
        task,
        hp,
        labels,
        tokenizer,
        train,
        valid,
        prepared,
        device,
        prec.autocast,
        _fingerprint(train_file, valid_file),
        prec.frozen_dtype,
        world=world,
        sharded=sharded,
    )
    if state is not None and resume_from is not None:
        _restore(run, resume_from, state)
        say(f"Resumed from the checkpoint at step {run.step}")
    run.ddp = None if sharded else wrap_ddp(run.prepared.model, world, device)
    if world.active:
        how = f"FSDP2, {_sharded_share(run.prepared.model)} of the weights sharded" if sharded else "DDP"
        say(f"Data parallel on {world.size} processes ({how}): each step's {hp.batch_size} examples split")
    return run


def _sharded_share(model: torch.nn.Module) -> str:
    """The share of the model's weights FSDP2 holds as shards (the rest stays whole on every rank)."""
    from torch.distributed.tensor import DTensor

    sizes = [(p.numel(), isinstance(p, DTensor)) for p in model.parameters()]
    total = sum(n for n, _ in sizes)
    return f"{sum(n for n, s in sizes if s) / max(total, 1):.0%}"


_MEMORY_KEYS = ("support", "selection", "support_block")


def _fit_memory(
    spec: JobSpec,
    hp: Hyper,
    model: torch.nn.Module,
    prec: Precision,
    memory_budget: int | None,
    state: dict[str, Any] | None,
    say: Callable[[str], None],
) -> Hyper:
    """SparseGrad's auto support and selection fitted to the memory budget (training.budget); a resumed
    job keeps its checkpoint's choice, whatever this worker's budget."""
    if state is not None:
        return dataclasses.replace(hp, **{k: state["hyper"][k] for k in _MEMORY_KEYS if k in state["hyper"]})
    if memory_budget:
        budget, source = memory_budget, "SGFT_DEVICE_MEMORY"
    else:
        budget, source = device_memory(prec.device), f"{prec.device.type} memory"
    explicit = {k for k, v in spec.hyperparameters.items() if not is_auto(v)}
    frozen_bytes = torch.finfo(prec.frozen_dtype).bits // 8
    hp, message = fit_to_budget(hp, explicit, model, budget, source, frozen_bytes)
    say(message)
    return hp


_IDENTITY_NAMES = {"data": "the training data", "frozen_weights": "storage of frozen weights (precision)"}


def _read_resume(folder: Path) -> dict[str, Any]:
    try:
        return ckpt.read_state(folder)
    except (ValueError, OSError) as exc:
        raise TrainingError(f"cannot resume: {exc}", param="resume_from") from exc


def _restore(run: Run, folder: Path, state: dict[str, Any]) -> None:
    """Load a checkpoint into a freshly prepared run, after checking it belongs to the same job and data."""
    saved, now = {"frozen_weights": "float32", **state["run"]}, run.identity()  # older: float32
    for key in now:
        if saved.get(key) != now[key]:
            what = _IDENTITY_NAMES.get(key, key)
            raise TrainingError(
                f"cannot resume: the checkpoint was made with a different {what} "
                f"({saved.get(key)!r} there, {now[key]!r} now)",
                param="resume_from",
            )
    # A setting newer than the checkpoint (absent from it) takes its resolved value now.
    if {**run.hp.to_dict(), **state["hyper"]} != run.hp.to_dict():
        changed = sorted(k for k, v in state["hyper"].items() if run.hp.to_dict().get(k) != v)
        raise TrainingError(f"cannot resume: hyperparameters changed since the checkpoint: {changed}")
    from training.methods import load_trainable_state

    load_trainable_state(run.prepared.model, ckpt.load_trainable(folder))
    ckpt.load_optimizer(folder, run.prepared.optimizer)
    for key in ("step", "epoch", "index", "trained_tokens", "best_loss", "bad_evals"):
        setattr(run, key, state[key])
    run.history = list(state["history"])
    run.last_eval = dict(state["last_eval"])
    run.best_step, run.best_eval = state.get("best_step"), dict(state.get("best_eval") or {})
    ckpt.restore_rng(folder, state)


def run_pad(tokenizer: PreTrainedTokenizerBase) -> int:
    return int(tokenizer.pad_token_id or 0)
