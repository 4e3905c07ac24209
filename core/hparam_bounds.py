"""Bounds of every hyper-parameter, shared by the API (a 400 at creation) and the training engine.

Pure data, no torch: the API checks a request against the same table the engine enforces, so an
out-of-range value is refused before a job exists.
"""

from __future__ import annotations

# name -> (low, high, whole number)
NUMBER_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "n_epochs": (1, 50, False),
    "batch_size": (1, 512, True),
    "learning_rate": (1e-7, 0.1, False),
    "learning_rate_multiplier": (0.01, 100, False),
    "dense_learning_rate": (1e-7, 0.1, False),
    "max_seq_length": (8, 8192, True),
    "warmup_ratio": (0.0, 0.5, False),
    "gradient_accumulation_steps": (1, 64, True),
    "eval_every": (1, 1e6, True),
    "checkpoint_every": (1, 1e6, True),
    "max_steps": (1, 1e7, True),
    "early_stopping_patience": (0, 100, True),
    "density": (1e-4, 1.0, False),
    "basis_steps": (1, 200, True),
    "basis_probe_steps": (0, 1000, True),
    "support_block": (1.0, 1000.0, False),
    "lora_rank": (1, 512, True),
    "weight_decay": (0.0, 1.0, False),
}
CHOICES: dict[str, tuple[str, ...]] = {
    "support": ("dynamic", "fixed"),
    "selection": ("gradient", "adam"),
    "bias_correction": ("global", "entry"),
    "lr_scheduler": ("linear", "cosine"),
}
BOOLS: tuple[str, ...] = ("train_layernorm", "train_rest_dense", "eval_at_start", "per_layer_basis")
