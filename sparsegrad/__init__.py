"""SparseGrad: fine-tune MLP layers through the top-k entries of their gradient in an HOSVD basis.

Pure PyTorch, usable without the service (like peft):

    cfg = SparseGradConfig(density=0.01, target_modules="auto", support="dynamic", basis_steps=10)
    basis = compute_basis(model, batches, cfg)   # batches: dicts, model(**batch).loss is the loss
    inject(model, cfg, basis)                    # in place; freezes what must not train
    opt = make_optimizer(model, lr=1e-4, weight_decay=0.0)
    ... loss.backward(); opt.step(); opt.zero_grad() ...
    save_delta(model, "out/")                    # sparsegrad_delta.json + .safetensors
    plain = load_delta(fresh_base_model, "out/") # base with the delta merged in, plain layers
    plain = merge(model)                         # same, from the live injected model

Checkpoints: `model.state_dict()` of an injected model holds everything that changes (live weights, ΔC,
support, basis); load it into `inject(fresh_model, cfg, basis)` with `load_state_dict`, plus the optimizer's
`state_dict()`, to resume exactly. `Basis.save` / `Basis.load` keep the basis between processes.
"""

from sparsegrad.baselines import apply_lora, apply_meprop, enable_full_finetuning, lora_rank_for
from sparsegrad.basis import Basis, compute_basis
from sparsegrad.config import SparseGradConfig
from sparsegrad.delta import (
    VALUE_DTYPES,
    DeltaMismatch,
    DeltaSize,
    delta_size,
    load_delta,
    read_delta_config,
    save_delta,
)
from sparsegrad.function import SparseGradFunction
from sparsegrad.layer import SparseGradLinear
from sparsegrad.model import (
    count_trainable_parameters,
    get_info,
    inject,
    merge,
    sparse_layers,
    trainable_parameters,
)
from sparsegrad.optim import SparseGradAdamW, make_optimizer, optimizer_state_bytes
from sparsegrad.targets import Target, find_target_modules

__all__ = [
    "Basis",
    "DeltaMismatch",
    "DeltaSize",
    "SparseGradAdamW",
    "VALUE_DTYPES",
    "SparseGradConfig",
    "SparseGradFunction",
    "SparseGradLinear",
    "Target",
    "apply_lora",
    "apply_meprop",
    "compute_basis",
    "count_trainable_parameters",
    "delta_size",
    "enable_full_finetuning",
    "find_target_modules",
    "get_info",
    "inject",
    "load_delta",
    "lora_rank_for",
    "make_optimizer",
    "merge",
    "optimizer_state_bytes",
    "read_delta_config",
    "save_delta",
    "sparse_layers",
    "trainable_parameters",
]

__version__ = "0.1.0"
