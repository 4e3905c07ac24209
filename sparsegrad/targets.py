"""Which modules SparseGrad targets and their role (up / down / gate), and which form the task head;
replacement lives elsewhere."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

import torch
from torch import nn

_Conv1D: type | None
try:  # GPT-2 style layers; transformers is optional for the library itself.
    from transformers.pytorch_utils import Conv1D as _Conv1D
except ImportError:  # pragma: no cover
    _Conv1D = None

# model_type -> (role, module-name suffix) pairs of the MLP linear maps.
_AUTO: dict[str, list[tuple[str, str]]] = {
    "bert": [("up", "intermediate.dense"), ("down", "output.dense")],
    "roberta": [("up", "intermediate.dense"), ("down", "output.dense")],
    "xlm-roberta": [("up", "intermediate.dense"), ("down", "output.dense")],
    "electra": [("up", "intermediate.dense"), ("down", "output.dense")],
    "distilbert": [("up", "ffn.lin1"), ("down", "ffn.lin2")],
    "gpt2": [("up", "mlp.c_fc"), ("down", "mlp.c_proj")],
}
_LLAMA_LIKE = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo", "granite", "smollm3"}
_LLAMA = [("up", "mlp.up_proj"), ("down", "mlp.down_proj")]
_ROLE_BY_SUFFIX = [
    ("gate", "gate_proj"),
    ("up", "up_proj"),
    ("down", "down_proj"),
    ("up", "intermediate.dense"),
    ("down", "output.dense"),
    ("up", "c_fc"),
    ("down", "c_proj"),
    ("up", "lin1"),
    ("down", "lin2"),
]
_BLOCK_INDEX = re.compile(r"\.(\d+)\.")


@dataclass(frozen=True)
class Target:
    """One target layer: full module name, role group key, logical shape (D_out, D_in), Conv1D layout."""

    name: str
    group: str
    d_out: int
    d_in: int
    transposed: bool


def is_linear_like(module: nn.Module) -> bool:
    """nn.Linear or transformers' Conv1D (weight stored transposed, (D_in, D_out))."""
    return isinstance(module, nn.Linear) or (_Conv1D is not None and isinstance(module, _Conv1D))


def module_weight(module: nn.Module) -> torch.Tensor:
    """`module.weight` as stored (Conv1D: (D_in, D_out))."""
    w = module.weight
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor")
    return w


def module_bias(module: nn.Module) -> torch.Tensor | None:
    """`module.bias` or None."""
    b = getattr(module, "bias", None)
    return b if isinstance(b, torch.Tensor) else None


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight in nn.Linear layout (D_out, D_in); a view for Conv1D (writes go through)."""
    w = module_weight(module)
    return w.t() if is_conv1d(module) else w


def is_conv1d(module: nn.Module) -> bool:
    return _Conv1D is not None and isinstance(module, _Conv1D)


def block_index(name: str) -> int | None:
    """First integer path component: 'bert.encoder.layer.3.intermediate.dense' -> 3."""
    m = _BLOCK_INDEX.search(f".{name}.")
    return int(m.group(1)) if m else None


def _role_of(name: str) -> str | None:
    for role, suffix in _ROLE_BY_SUFFIX:
        if name == suffix or name.endswith("." + suffix):
            return role
    return None


def _listed(name: str, entry: str) -> bool:
    """A list entry names a module exactly, by suffix, or as a glob over the full name (fnmatch)."""
    if any(c in entry for c in "*?["):
        return fnmatch.fnmatchcase(name, entry)
    return name == entry or name.endswith("." + entry)


def _auto_pairs(model: nn.Module, include_gate_proj: bool) -> list[tuple[str, str]]:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in _LLAMA_LIKE:
        return _LLAMA + ([("gate", "mlp.gate_proj")] if include_gate_proj else [])
    if model_type in _AUTO:
        return _AUTO[model_type]
    raise ValueError(
        f"target_modules='auto' does not know model type {model_type!r}; pass a list of module "
        "names/suffixes or a regex (e.g. r'.*mlp\\.(up|down)_proj')"
    )


def find_target_modules(
    model: nn.Module,
    target_modules: str | list[str] = "auto",
    include_gate_proj: bool = False,
    layers: list[int] | None = None,
) -> list[Target]:
    """Resolve the target layers of `model`, in module order.

    `target_modules`: "auto" (by model type: BERT/RoBERTa/MiniLM `intermediate.dense` + block `output.dense`,
    never `attention.output.dense`; LLaMA family `mlp.up_proj`/`mlp.down_proj` (+ `gate_proj` if asked);
    GPT-2 `mlp.c_fc`/`mlp.c_proj`), a list of exact names, suffixes or globs (fnmatch over the full name,
    e.g. "*.mlp.*_proj"), or a regex (full match on the name; the service never passes one).
    `layers` keeps only those block indices. Groups: role ("up"/"down"/"gate") when the name tells it, else
    the shape ("1536x384"); layers of one group always share a shape.
    """
    named = [(n, m) for n, m in model.named_modules() if n and is_linear_like(m)]
    chosen: list[tuple[str, nn.Module, str | None]]
    if target_modules == "auto":
        pairs = _auto_pairs(model, include_gate_proj)
        chosen = []
        for n, m in named:
            if ".attention." in f".{n}.":
                continue  # BERT's attention.output.dense shares the suffix "output.dense"
            for pair_role, suffix in pairs:
                if n.endswith("." + suffix):
                    chosen.append((n, m, pair_role))
                    break
    elif isinstance(target_modules, list):
        chosen = [(n, m, _role_of(n)) for n, m in named if any(_listed(n, t) for t in target_modules)]
    else:
        pattern = re.compile(target_modules)
        chosen = [(n, m, _role_of(n)) for n, m in named if pattern.fullmatch(n)]
    if layers is not None:
        wanted = set(layers)
        chosen = [c for c in chosen if block_index(c[0]) in wanted]
    if not chosen:
        raise ValueError(
            f"no linear layer matches target_modules={target_modules!r} (layers={layers}); "
            f"linear layers look like: {[n for n, _ in named[:6]]}"
        )
    targets = []
    for n, m, role in chosen:
        d_out, d_in = linear_weight(m).shape
        group = f"{role}:{d_out}x{d_in}" if role else f"{d_out}x{d_in}"
        targets.append(Target(n, group, int(d_out), int(d_in), is_conv1d(m)))
    return targets


def get_submodule_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """(parent module, attribute name) of the module called `name`."""
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


_HEAD_NAMES = {"classification": ("classifier", "score", "qa_outputs", "pooler"), "causal_lm": ("lm_head",)}


def infer_task(model: nn.Module) -> str:
    """'causal_lm' for *ForCausalLM / *LMHeadModel classes, else 'classification'."""
    name = type(model).__name__
    return "causal_lm" if name.endswith("ForCausalLM") or name.endswith("LMHeadModel") else "classification"


def find_head_modules(model: nn.Module, task: str) -> list[str]:
    """Top-most modules named like a task head (classifier / score / pooler, or lm_head for a causal LM)."""
    names = _HEAD_NAMES.get(task, ())
    found: list[str] = []
    for n, _ in model.named_modules():
        if n and n.rpartition(".")[2] in names and not any(n.startswith(f + ".") for f in found):
            found.append(n)
    return found
