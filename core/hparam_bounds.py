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
    "max_delta_density": (1e-4, 1.0, False),
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
    "result_checkpoint": ("best", "last"),
}
BOOLS: tuple[str, ...] = ("train_layernorm", "train_rest_dense", "eval_at_start", "per_layer_basis")

DEFAULT_DENSITY = 0.01  # "auto" density (SparseGrad / MeProp)
SPARSE_DELTA_METHODS = ("sparsegrad", "meprop")


def delta_cap_problem(method: str, hyper: dict[str, object]) -> str | None:
    """Why max_delta_density (the bound on a sparse delta's share of each layer's coefficients) does not fit
    the rest of a job, or None: it needs a sparse delta (sparsegrad, meprop), a dynamic support and a cap of
    at least the density (every step moves that share of each layer)."""
    cap = hyper.get("max_delta_density")
    if cap is None or cap == "auto":
        return None
    if method not in SPARSE_DELTA_METHODS:
        methods = " and ".join(SPARSE_DELTA_METHODS)
        return f"max_delta_density applies to {methods} (a sparse delta), not {method}"
    if method == "sparsegrad" and hyper.get("support") == "fixed":
        return "max_delta_density applies to support 'dynamic' only (a fixed support's delta holds k entries)"
    density = hyper.get("density")
    density = DEFAULT_DENSITY if density is None or density == "auto" else density
    if isinstance(cap, int | float) and isinstance(density, int | float) and cap < density:
        return f"max_delta_density ({cap:g}) must be >= density ({density:g}): every step moves that share"
    return None


# target_modules: module names, name suffixes or glob patterns (fnmatch: * ? [..]), never a regular
# expression: a user's pattern is matched in the worker, and a glob's matching time is bounded (Python
# compiles `*` to atomic groups, so no pattern backtracks catastrophically). Sizes are bounded too.
MAX_TARGET_PATTERNS = 64
MAX_TARGET_PATTERN_CHARS = 200
_PATTERN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-*?[]!")
_TARGET_HELP = (
    "target_modules takes 'auto', module names or name suffixes (e.g. 'mlp.up_proj'), or glob patterns "
    "(e.g. '*.mlp.*_proj'), as a list or a comma-separated string"
)


def target_patterns(value: object) -> str | list[str]:
    """'auto', or the list of names / suffixes / globs in `value`; ValueError naming the problem."""
    if value is None or value == "auto":
        return "auto"
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        parts = [v.strip() for v in value if v.strip()]
    else:
        raise ValueError(f"{_TARGET_HELP}; got {type(value).__name__}")
    if not parts:
        raise ValueError(f"{_TARGET_HELP}; got nothing")
    if len(parts) > MAX_TARGET_PATTERNS:
        raise ValueError(f"{_TARGET_HELP}; got {len(parts)} entries, at most {MAX_TARGET_PATTERNS}")
    for part in parts:
        if len(part) > MAX_TARGET_PATTERN_CHARS:
            raise ValueError(
                f"{_TARGET_HELP}; an entry is {len(part)} characters, at most {MAX_TARGET_PATTERN_CHARS}"
            )
        bad = sorted(set(part) - _PATTERN_CHARS)
        if bad:
            regex = " (regular expressions are not accepted)" if set(bad) & set("()|+\\^${}") else ""
            raise ValueError(f"{_TARGET_HELP}; {part[:60]!r} has the character(s) {''.join(bad)!r}{regex}")
    return parts
