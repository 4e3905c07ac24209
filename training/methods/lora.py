"""lora: peft LoRA on the same target layers as SparseGrad; its rank matched to SparseGrad's k unless given.
Its delta is peft's own adapter files (save_pretrained)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

import sparsegrad as sg
from training.distributed import World, shard_model
from training.methods.base import Attached, Method

if TYPE_CHECKING:
    from training.hparams import Hyper


class Lora(Method):
    name: ClassVar[str] = "lora"

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
        lora_rank = hp.lora_rank or sg.lora_rank_for(model, hp.density, cfg.target_modules)
        model = sg.apply_lora(
            model,
            target_modules=cfg.target_modules,
            rank=lora_rank,
            task=cfg.task,
            train_rest_dense=hp.train_rest_dense,
        )
        if sharded:
            shard_model(model, set())
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [{"params": [p for _, p in trainable], "lr": hp.learning_rate}]
        if hp.dense_learning_rate != hp.learning_rate:  # one group when both rates are the same
            groups = [
                {"params": [p for n, p in trainable if "lora_" in n], "lr": hp.learning_rate},
                {"params": [p for n, p in trainable if "lora_" not in n], "lr": hp.dense_learning_rate},
            ]
        optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]], lr=hp.learning_rate, weight_decay=hp.weight_decay
        )
        return Attached(model, optimizer, basis, lora_rank)

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
        model.save_pretrained(str(out), state_dict=full)  # type: ignore[operator]

    def merge(self, base: nn.Module, delta_dir: Path) -> nn.Module:
        from peft import PeftModel

        return PeftModel.from_pretrained(base, str(delta_dir)).merge_and_unload()
