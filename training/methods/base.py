"""What every fine-tuning method is to the engine: one `Method` object (as peft has one tuner per method) that
builds the SparseGradConfig, prepares the model and its optimizer, counts what trains, holds its checkpoint
state, saves its delta and merges one into a base model. The registry is training.methods.REGISTRY.

Deltas (each folder also holds `sgft_delta.json`: method, task, labels, base model; what merge_delta reads):
sparsegrad/meprop -> sparsegrad.save_delta (docs/delta-format.md); lora -> peft save_pretrained (peft's own
adapter files); full -> every weight in full_delta.safetensors with full_delta.json {"format": "full"}.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

import sparsegrad as sg
from training.distributed import SINGLE, World

if TYPE_CHECKING:
    from training.hparams import Hyper

DELTA_META = "sgft_delta.json"
FULL_FORMAT = "full"
# full fine-tuning's delta (every weight); it used peft's file names before 2026-12-06 (merge reads both)
FULL_CONFIG, FULL_WEIGHTS = "full_delta.json", "full_delta.safetensors"


@dataclass
class Prepared:
    """The model to train (a PeftModel for LoRA), its optimizer, and what it took to build."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    basis: sg.Basis | None
    trainable_parameters: int
    lora_rank: int | None


@dataclass
class Attached:
    """What `Method.attach` returns: the model to train, its optimizer, the basis and LoRA's rank."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    basis: sg.Basis | None = None
    lora_rank: int | None = None


class Method(ABC):
    """One fine-tuning method. The flags are what the rest of the engine asks of a method by name."""

    name: ClassVar[str]
    # its delta is sparsegrad's (ΔC in a basis: sparsegrad.save_delta, load_delta, delta_size)
    sparse_delta: ClassVar[bool] = False
    # an HOSVD basis from the first batches; its support options (support_block, selection, the memory fit)
    basis: ClassVar[bool] = False
    # every weight trains: the model loads (and stays) in float32 whatever the precision
    float32_weights: ClassVar[bool] = False

    def support(self, hp: Hyper) -> dict[str, Any]:
        """The SparseGradConfig support fields this method takes from the job."""
        return {"support": hp.support, "support_block": None, "selection": "gradient"}

    def config(
        self,
        hp: Hyper,
        task: str,
        labels: list[str] | None,
        base_id: str,
        library: dict[str, Any] | None = None,
    ) -> sg.SparseGradConfig:
        """The job's SparseGradConfig; `library`: fields the job API does not offer (JobSpec.library)."""
        return sg.SparseGradConfig(
            density=hp.density,
            max_delta_density=hp.max_delta_density,
            target_modules=hp.target_modules,
            basis_steps=hp.basis_steps,
            task=task,  # type: ignore[arg-type]
            labels=labels,
            base_model_id=base_id,
            train_layernorm=hp.train_layernorm,
            train_rest_dense=hp.train_rest_dense,
            **self.support(hp),
            **(library or {}),
        )

    @abstractmethod
    def attach(
        self,
        model: nn.Module,
        hp: Hyper,
        cfg: sg.SparseGradConfig,
        basis_batches: Iterable[dict[str, torch.Tensor]] | None,
        basis: sg.Basis | None,
        world: World,
        sharded: bool,
    ) -> Attached:
        """Apply the method to `model` (in place but for LoRA) and build its optimizer's parameter groups."""

    def prepare(
        self,
        model: nn.Module,
        hp: Hyper,
        cfg: sg.SparseGradConfig,
        basis_batches: Iterable[dict[str, torch.Tensor]] | None,
        basis: sg.Basis | None = None,
        world: World = SINGLE,
        sharded: bool = False,
    ) -> Prepared:
        """Apply the method to `model` (in place but for LoRA); a `basis` given (resume) skips the basis
        phase. On several processes (`world`) every rank holds the same basis, support and optimizer state."""
        done = self.attach(model, hp, cfg, basis_batches, basis, world, sharded)
        for group in done.optimizer.param_groups:
            group["base_lr"] = group["lr"]  # the schedule scales each group's own rate (loop.py)
        count = self.trainable_count(done.model)
        return Prepared(done.model, done.optimizer, done.basis, count, done.lora_rank)

    def trainable_count(self, model: nn.Module) -> int:
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    def delta_stats(self, model: nn.Module, value_dtype: str = "float32") -> dict[str, int]:
        """What the delta holds now: "delta_nnz" (stored numbers) and "delta_bytes" (its tensors' bytes;
        `value_dtype` is a sparse delta's, the parameters here keep their own dtype)."""
        params = [p for p in model.parameters() if p.requires_grad]
        return {
            "delta_nnz": sum(p.numel() for p in params),
            "delta_bytes": sum(p.numel() * p.element_size() for p in params),
        }

    def round_delta(self, optimizer: torch.optim.Optimizer, value_dtype: str) -> None:
        """Make the model exactly base + the delta written in `value_dtype` (a sparse delta's values put on
        that dtype's grid); LoRA and full store their parameters as they are, so nothing to do."""
        return None

    def trainable_names(self, model: nn.Module, state: dict[str, torch.Tensor]) -> set[str]:
        """The state-dict names of what training changes (a checkpoint's trainable.safetensors)."""
        return {n for n, p in model.named_parameters() if p.requires_grad}

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Everything training changes, by state-dict name (the basis is saved apart)."""
        state = model.state_dict()
        names = self.trainable_names(model, state)
        return {n: state[n].detach().cpu().contiguous().clone() for n in sorted(names) if n in state}

    @abstractmethod
    def write_delta(
        self,
        model: nn.Module,
        out: Path,
        task: str,
        labels: list[str] | None,
        base: str,
        full: dict[str, torch.Tensor] | None,
        value_dtype: str = "float32",
    ) -> None:
        """Write the method's own delta files into the folder `out` (`value_dtype`: a sparse delta's value
        precision; LoRA and full keep their parameters' dtype)."""

    def save_delta(
        self,
        model: nn.Module,
        out: Path,
        task: str,
        labels: list[str] | None,
        base: str,
        extra: dict[str, Any],
        full: dict[str, torch.Tensor] | None = None,
        value_dtype: str = "float32",
    ) -> Path:
        """Write the delta to `out` (+ sgft_delta.json) and return it. `full`: the whole state dict of an
        FSDP-sharded model (training.distributed.gathered), whose own state dict holds shards."""
        out.mkdir(parents=True, exist_ok=True)
        self.write_delta(model, out, task, labels, base, full, value_dtype)
        meta = delta_meta(self.name, task, labels, base, extra)
        (out / DELTA_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        return out

    @abstractmethod
    def merge(self, base: nn.Module, delta_dir: Path) -> nn.Module:
        """`base` with the delta in `delta_dir` merged into its weights (no wrapper left)."""


def delta_meta(
    method: str, task: str, labels: list[str] | None, base: str, extra: dict[str, Any]
) -> dict[str, Any]:
    regression = task == "classification" and labels is None
    return {
        "method": method,
        "task": task,
        "labels": labels,
        "num_labels": (1 if regression else len(labels or [])) if task == "classification" else None,
        "problem_type": ("regression" if regression else "single_label_classification")
        if task == "classification"
        else None,
        "base_model": base,
        **extra,
    }


def load_trainable_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of `Method.trainable_state`: every saved tensor must find its place in the model."""
    result = model.load_state_dict(tensors, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"checkpoint holds tensors this model lacks: {result.unexpected_keys[:5]}")
