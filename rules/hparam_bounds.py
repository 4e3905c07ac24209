"""The one table of job hyper-parameters and the rules that link them, shared by the API (a 400 at creation),
the CLI, the web form and the training engine.

Pure data and arithmetic, no torch: the API checks a request with the same table and rules the engine
enforces, so any job the API accepts, the engine accepts (tests/training/test_hparam_table.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from rules.hparam_auto import auto_batch_size

METHODS: tuple[str, ...] = ("sparsegrad", "lora", "full", "meprop")  # the job API's methods, in this order
METHOD_LABELS: dict[str, str] = {
    "sparsegrad": "SparseGrad (sparse delta, default)",
    "lora": "LoRA",
    "full": "Full fine-tuning",
    "meprop": "meProp",
}
SPARSE_DELTA_METHODS = ("sparsegrad", "meprop")  # a sparse delta in a basis: density and its cap apply
Kind = Literal["number", "integer", "choice", "bool", "modules"]


@dataclass(frozen=True)
class Param:
    """One job hyper-parameter: its kind, bounds or choices, what "auto" (or leaving it out) gives, help."""

    name: str
    kind: Kind
    auto: str  # what "auto" or leaving it out gives
    help: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple[str, ...] = ()


def _num(name: str, low: float, high: float, auto: str, help: str, whole: bool = False) -> Param:
    return Param(name, "integer" if whole else "number", auto, help, low, high)


# Every hyper-parameter a job accepts. The API (a 400 at creation), the CLI, the web form (GET
# /v1/fine_tuning/hyperparameters) and the training engine all read this table; rules that link two fields
# are in `check_rules` below, also shared. The "auto" rules themselves are rules.hparam_auto.
PARAMS: dict[str, Param] = {
    p.name: p
    for p in (
        _num(
            "n_epochs",
            1,
            50,
            "3 up to 5,000 examples, 2 below 20,000, else 1",
            "Passes over the data",
        ),
        _num(
            "batch_size",
            1,
            512,
            "classification 8 / 16 / 32 (n < 500 / < 5,000 / more); causal LM 2 (n < 50) or 4",
            "Examples per optimizer step",
            whole=True,
        ),
        _num(
            "learning_rate",
            1e-7,
            0.1,
            "the task's and method's base rate x learning_rate_multiplier",
            "Peak rate",
        ),
        _num(
            "learning_rate_multiplier",
            0.01,
            100,
            "1",
            "Scales the auto learning rate (not together with learning_rate)",
        ),
        _num(
            "dense_learning_rate",
            1e-7,
            0.1,
            "learning_rate",
            "Rate of what trains densely beside SparseGrad, MeProp or LoRA (head, rest); not for full",
        ),
        _num(
            "max_seq_length",
            8,
            8192,
            "classification 128, causal LM 512, at most the model's position limit",
            "Tokens per example (longer ones are cut)",
            whole=True,
        ),
        _num("warmup_ratio", 0.0, 0.5, "0.1", "Share of the steps with a linear warmup"),
        _num(
            "gradient_accumulation_steps",
            1,
            64,
            "1",
            "Each step's batch split into this many micro-batches (at most batch_size)",
            whole=True,
        ),
        _num("eval_every", 1, 1e6, "max(10, ceil(steps / 5))", "Steps between evaluations", whole=True),
        _num("checkpoint_every", 1, 1e6, "max(10, ceil(steps / 5))", "Steps between checkpoints", whole=True),
        _num(
            "max_steps", 1, 1e7, "none: the epochs decide", "Stop after this many optimizer steps", whole=True
        ),
        _num(
            "early_stopping_patience",
            0,
            100,
            "0 (off)",
            "Evaluations without a better validation loss before stopping",
            whole=True,
        ),
        _num("density", 1e-4, 1.0, "0.01", "SparseGrad / MeProp: share of MLP coefficients updated per step"),
        _num(
            "max_delta_density",
            1e-4,
            1.0,
            "none (unbounded)",
            "SparseGrad / MeProp, dynamic support: cap on the delta's share of each layer's coefficients "
            "(newcomers fill the room left, then the support freezes)",
        ),
        _num("basis_steps", 1, 200, "10", "SparseGrad: gradient steps of the basis phase", whole=True),
        _num(
            "support_block",
            1.0,
            1000.0,
            "causal LM 2, else 20",
            "SparseGrad: supports stay in a block of x k coefficients (x density >= 1: none)",
        ),
        Param(
            "delta_dtype",
            "choice",
            "bfloat16",
            "SparseGrad / MeProp: precision of the delta file's ΔC values (float32: twice the bytes); the "
            "engine rounds ΔC to it before every evaluation, so the metrics are the file's",
            choices=("float32", "bfloat16", "float16"),
        ),
        _num(
            "lora_rank", 1, 512, "the rank whose MLP parameters match SparseGrad's k", "LoRA rank", whole=True
        ),
        _num("weight_decay", 0.0, 1.0, "0", "AdamW weight decay"),
        Param(
            "support",
            "choice",
            "dynamic",
            "SparseGrad: dynamic (top-k re-chosen every step) or fixed (chosen once)",
            choices=("dynamic", "fixed"),
        ),
        Param(
            "selection",
            "choice",
            "adam for dynamic classification runs of 100+ steps, else gradient",
            "SparseGrad: top-k of the gradient, or of dense-Adam steps (dynamic support only)",
            choices=("gradient", "adam"),
        ),
        Param("lr_scheduler", "choice", "linear", "Decay after the warmup", choices=("linear", "cosine")),
        Param(
            "result_checkpoint",
            "choice",
            "best with a validation file, else last",
            "The published model: the step of lowest validation loss, or the last step",
            choices=("best", "last"),
        ),
        Param("train_layernorm", "bool", "false", "Also train the LayerNorms (not with LoRA)"),
        Param(
            "train_rest_dense",
            "bool",
            "false",
            "Also train every non-target weight densely (the paper's GLUE set-up)",
        ),
        Param("eval_at_start", "bool", "true", "Evaluate before the first step (the 'before' numbers)"),
        Param(
            "target_modules",
            "modules",
            "the MLP up/down layers of the architecture",
            "Module names, name suffixes or globs ('*.mlp.*_proj'): a list or a comma-separated string",
        ),
    )
}
# Knobs the job API had, removed as experiments without a measured gain (docs/benchmarks.md, rest-dense runs);
# they stay in the library's SparseGradConfig and the bench. A request that names one is refused, naming it.
REMOVED: dict[str, str] = {
    "basis_probe_steps": "a head fitted 50 steps first: 81.58% on SST-2, within the seed spread",
    "per_layer_basis": "one basis per layer: 81.28% on SST-2, within the seed spread",
    "bias_correction": "'entry': 81.40% against 81.51% for 'global' on SST-2, five seeds",
}

# Views of the table by kind: name -> (low, high, whole number); name -> choices; boolean names.
NUMBER_BOUNDS: dict[str, tuple[float, float, bool]] = {
    p.name: (p.low, p.high, p.kind == "integer") for p in PARAMS.values() if p.kind in ("number", "integer")
}
CHOICES: dict[str, tuple[str, ...]] = {p.name: p.choices for p in PARAMS.values() if p.kind == "choice"}
BOOLS: tuple[str, ...] = tuple(p.name for p in PARAMS.values() if p.kind == "bool")


def describe_table() -> dict[str, Any]:
    """The table as JSON (GET /v1/fine_tuning/hyperparameters: what the web form and clients read)."""
    params = [
        {
            "name": p.name,
            "kind": p.kind,
            "minimum": p.low if p.kind in ("number", "integer") else None,
            "maximum": p.high if p.kind in ("number", "integer") else None,
            "choices": list(p.choices) or None,
            "auto": p.auto,
            "description": p.help,
        }
        for p in PARAMS.values()
    ]
    methods = [
        {"name": m, "label": METHOD_LABELS[m], "sparse_delta": m in SPARSE_DELTA_METHODS} for m in METHODS
    ]
    return {"object": "hyperparameter_table", "methods": methods, "data": params, "removed": REMOVED}


class HyperparameterProblem(ValueError):
    """A value or a combination the engine would refuse; `param` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def is_auto(value: object) -> bool:
    """A hyper-parameter left to the engine: missing, None or "auto"."""
    return value is None or value == "auto"


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"a value of {len(text)} characters"


def check_value(name: str, value: Any, prefix: str = "") -> None:
    """One named value against the table (`prefix` goes before names in messages, e.g. "hyperparameters.")."""
    named = f"{prefix}{name}"
    if name in REMOVED:
        raise HyperparameterProblem(
            f"{named} was removed from the job API ({REMOVED[name]}); it remains in the library's "
            "SparseGradConfig",
            name,
        )
    param = PARAMS.get(name)
    if param is None:
        known = ", ".join(sorted(PARAMS))
        raise HyperparameterProblem(f"unknown hyperparameter {named!r}; known: {known}", name)
    if is_auto(value):
        return
    if param.kind in ("number", "integer"):
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise HyperparameterProblem(f"{named} must be a number or 'auto', got {_shown(value)}", name)
        # No float() or int() of the value: a JSON integer may have thousands of digits (float() then
        # overflows), and Python compares an int with a float bound exactly. is_integer() is False for inf
        # and nan, which the bounds refuse anyway.
        if param.kind == "integer" and isinstance(value, float) and not value.is_integer():
            raise HyperparameterProblem(f"{named} must be a whole number, got {value!r}", name)
        if not param.low <= value <= param.high:
            shown = repr(value) if len(repr(value)) <= 40 else f"a number with {len(str(value))} digits"
            raise HyperparameterProblem(
                f"{named} must be between {param.low:g} and {param.high:g}, got {shown}", name
            )
    elif param.kind == "choice":
        if value not in param.choices:
            choices = ", ".join(param.choices)
            raise HyperparameterProblem(f"{named} must be one of {choices}, got {_shown(value)}", name)
    elif param.kind == "bool":
        if not isinstance(value, bool):
            raise HyperparameterProblem(f"{named} must be true or false, got {_shown(value)}", name)
    else:
        try:
            target_patterns(value)
        except ValueError as exc:
            raise HyperparameterProblem(f"{named}: {exc}", name) from None


def check_rules(
    raw: dict[str, Any],
    *,
    method: str,
    task: str,
    n_train: int,
    validation: bool,
    model_max_length: int | None = None,
    devices: int = 1,
    prefix: str = "",
) -> None:
    """Every value (check_value), then the rules that link fields, as the engine resolves them.
    `model_max_length`: the model's position limit, where known; `devices`: the job's resources.devices."""
    for name, value in raw.items():
        check_value(name, value, prefix)

    def given(name: str) -> bool:
        return not is_auto(raw.get(name))

    def problem(message: str, name: str) -> HyperparameterProblem:
        return HyperparameterProblem(message.replace("{p}", prefix), name)

    if given("learning_rate") and given("learning_rate_multiplier"):
        raise problem(
            "give {p}learning_rate or {p}learning_rate_multiplier, not both (the multiplier scales the auto "
            "rate)",
            "learning_rate_multiplier",
        )
    if raw.get("selection") == "adam" and raw.get("support") == "fixed":
        raise problem(
            "{p}selection 'adam' applies to support 'dynamic' only (a fixed support moves the same k entries "
            "every step)",
            "selection",
        )
    batch = raw["batch_size"] if given("batch_size") else auto_batch_size(n_train, task)
    accum = raw["gradient_accumulation_steps"] if given("gradient_accumulation_steps") else 1
    if accum > batch:
        raise problem(
            f"{{p}}gradient_accumulation_steps ({accum}) must not exceed batch_size ({batch}): each step's "
            "batch is split into that many micro-batches",
            "gradient_accumulation_steps",
        )
    if batch < devices:
        raise problem(
            f"{{p}}batch_size {batch} is below the job's {devices} devices (resources.devices): each needs "
            "an example per step; raise batch_size or ask for fewer devices",
            "batch_size",
        )
    basis_steps = raw["basis_steps"] if given("basis_steps") else 10
    if method == "sparsegrad" and basis_steps < devices:
        raise problem(
            f"{{p}}basis_steps {basis_steps} is below the job's {devices} devices (resources.devices): each "
            "computes part of the basis from whole batches; raise basis_steps or ask for fewer devices",
            "basis_steps",
        )
    length = raw.get("max_seq_length")
    if (
        model_max_length is not None
        and length is not None
        and given("max_seq_length")
        and length > model_max_length
    ):
        raise problem(
            f"{{p}}max_seq_length must be at most {model_max_length} for this model (its position limit), "
            f"got {length}",
            "max_seq_length",
        )
    if raw.get("result_checkpoint") == "best" and not validation:
        raise problem(
            "{p}result_checkpoint 'best' keeps the step of lowest validation loss: it needs a "
            "validation_file",
            "result_checkpoint",
        )
    if method == "full" and given("dense_learning_rate"):
        raise problem(
            "{p}dense_learning_rate applies to sparsegrad, meprop and lora; full trains every weight at "
            "learning_rate",
            "dense_learning_rate",
        )
    if method == "lora" and raw.get("train_layernorm") is True:
        raise problem("{p}train_layernorm is not available with LoRA", "train_layernorm")
    cap = delta_cap_problem(method, raw)
    if cap:
        raise problem(cap, "max_delta_density")


# The create request's `resources`: name -> (low, high). The deployment's own ceiling (the most devices any
# of its workers serves) is SGFT_MAX_DEVICES; workers advertise theirs with SGFT_WORKER_DEVICES.
RESOURCE_BOUNDS: dict[str, tuple[int, int]] = {"devices": (1, 64)}

DEFAULT_DENSITY = 0.01  # "auto" density (SparseGrad / MeProp)


def delta_cap_problem(method: str, hyper: dict[str, object]) -> str | None:
    """Why max_delta_density (the bound on a sparse delta's share of each layer's coefficients) does not fit
    the rest of a job, or None: it needs a sparse delta (sparsegrad, meprop), a dynamic support and a cap of
    at least the density (every step moves that share of each layer). Field names in the message follow a
    "{p}" that check_rules replaces with its prefix, as in all of its messages."""
    cap = hyper.get("max_delta_density")
    if cap is None or cap == "auto":
        return None
    if method not in SPARSE_DELTA_METHODS:
        methods = " and ".join(SPARSE_DELTA_METHODS)
        return f"{{p}}max_delta_density applies to {methods} (a sparse delta), not {method}"
    if method == "sparsegrad" and hyper.get("support") == "fixed":
        return (
            "{p}max_delta_density applies to support 'dynamic' only (a fixed support's delta holds k entries)"
        )
    density = hyper.get("density")
    density = DEFAULT_DENSITY if density is None or density == "auto" else density
    if isinstance(cap, int | float) and isinstance(density, int | float) and cap < density:
        return (
            f"{{p}}max_delta_density ({cap:g}) must be >= {{p}}density ({density:g}): every step moves that "
            "share"
        )
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
