"""The two methods whose delta is sparsegrad's (ΔC entries in a basis, docs/delta-format.md).

- sparsegrad: `compute_basis` on the job's first `basis_steps` batches, `inject`, sparse AdamW.
- meprop: top-k of dL/dW on the same layers with the same k (identity basis), re-selected every step.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

import sparsegrad as sg
from training.distributed import World, shard_model
from training.methods.base import Attached, Method

if TYPE_CHECKING:
    from training.hparams import Hyper


class SparseDelta(Method):
    """What sparsegrad and meprop share: sparse layers, sparsegrad's optimizer, delta, state and merge."""

    sparse_delta: ClassVar[bool] = True

    def optimizer(self, model: nn.Module, hp: Hyper, world: World) -> torch.optim.Optimizer:
        """sparsegrad's AdamW; on several processes dL/dC (MeProp's dL/dW) averaged before selection."""
        return sg.make_optimizer(
            model,
            lr=hp.learning_rate,
            weight_decay=hp.weight_decay,
            dense_lr=hp.dense_learning_rate,
            reduce=world.reduce_mean if world.active else None,
        )

    def trainable_count(self, model: nn.Module) -> int:
        return sg.count_trainable_parameters(model)

    def delta_stats(self, model: nn.Module, value_dtype: str = "float32") -> dict[str, int]:
        size = sg.delta_size(model, value_dtype)
        return {"delta_nnz": size.nnz, "delta_bytes": size.bytes}

    def round_delta(self, optimizer: torch.optim.Optimizer, value_dtype: str) -> None:
        if value_dtype != "float32":
            assert isinstance(optimizer, sg.SparseGradAdamW)
            optimizer.round_delta(sg.VALUE_DTYPES[value_dtype])

    def trainable_names(self, model: nn.Module, state: dict[str, torch.Tensor]) -> set[str]:
        """The trainable parameters, the injected layers' live weights and sparse buffers (ΔC, support)."""
        names = super().trainable_names(model, state)
        for layer_name in sg.sparse_layers(model):
            prefix = layer_name + "."
            names |= {
                n for n in state if n.startswith(prefix) and not n.startswith((prefix + "P", prefix + "Q"))
            }
            names -= {prefix + "coef"}
        return names

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
        sg.save_delta(model, out, value_dtype=value_dtype)

    def merge(self, base: nn.Module, delta_dir: Path) -> nn.Module:
        return sg.load_delta(base, delta_dir)


def sparse_params(model: nn.Module) -> set[nn.Parameter]:
    """Every parameter of the layers SparseGrad or MeProp trains (kept whole under FSDP)."""
    return {p for layer in sg.sparse_layers(model).values() for p in layer.parameters()}


class SparseGrad(SparseDelta):
    """On several processes the Gram sums are summed over the ranks: every rank holds the same basis."""

    name: ClassVar[str] = "sparsegrad"
    basis: ClassVar[bool] = True

    def support(self, hp: Hyper) -> dict[str, Any]:
        return {"support": hp.support, "support_block": hp.support_block, "selection": hp.selection}

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
        if basis is None:  # a basis given (resume) skips the basis phase
            assert basis_batches is not None
            summed = world.reduce_sum if world.active else None
            basis = sg.compute_basis(model, basis_batches, cfg, reduce=summed)
        model = sg.inject(model, cfg, basis)
        basis.drop_gradients()  # the choices made from them stay in the basis (and its checkpoint file)
        if sharded:  # the frozen rest sharded; the target layers (coefficients, bases, weights) stay whole
            shard_model(model, sparse_params(model))
        return Attached(model, self.optimizer(model, hp, world), basis)


class MeProp(SparseDelta):
    name: ClassVar[str] = "meprop"

    def support(self, hp: Hyper) -> dict[str, Any]:
        """MeProp re-selects its support every step: always dynamic."""
        return {"support": "dynamic", "support_block": None, "selection": "gradient"}

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
        model = sg.apply_meprop(model, cfg)
        if sharded:
            shard_model(model, sparse_params(model))
        return Attached(model, self.optimizer(model, hp, world), basis)
