"""`SparseGradConfig`: every knob of the method, validated on construction."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

Support = Literal["dynamic", "fixed"]
BiasCorrection = Literal["global", "entry"]
Selection = Literal["gradient", "adam"]
Task = Literal["classification", "causal_lm"]


@dataclass
class SparseGradConfig:
    """Configuration of a SparseGrad fine-tune (one adapter per model).

    Every field carries its help text in `metadata["help"]`; `__post_init__` rejects bad values with an
    error naming the field.
    """

    density: float = field(
        default=0.01,
        metadata={
            "help": "Fraction of each target layer's coefficients updated per step: "
            "k = round(density*D_out*D_in)."
        },
    )
    target_modules: str | list[str] = field(
        default="auto",
        metadata={
            "help": "'auto' (MLP up/down layers by model type), a list of module names, name suffixes or "
            "glob patterns ('*.mlp.*_proj'), or a regular expression matched against full module names."
        },
    )
    support: Support = field(
        default="dynamic",
        metadata={
            "help": "'dynamic': top-k of dL/dC re-selected every step (the paper). 'fixed': k coefficients "
            "per "
            "layer chosen once from the basis phase's accumulated gradient (optionally refreshed)."
        },
    )
    selection: Selection = field(
        default="gradient",
        metadata={
            "help": "Dynamic support only: how each step's k coefficients are chosen. 'gradient': the top-k "
            "|dL/dC| of the step (the paper); Adam moments live only on entries ever selected and move only "
            "when selected. 'adam': Adam moments of every coefficient follow dL/dC every step (dense "
            "Adam in the HOSVD basis) and the k coefficients whose Adam step is largest move; the moments "
            "cost 2·D_out·D_in floats per layer, as the reference code's SparseAdam buffers."
        },
    )
    bias_correction: BiasCorrection = field(
        default="global",
        metadata={
            "help": "Adam bias correction of the sparse coefficients. 'global': by the count of optimizer "
            "steps, as torch.optim.SparseAdam in the reference code: an entry that joins the support late "
            "takes a damped first step. 'entry': by the entry's own count of updates: every newcomer's first "
            "step is a full lr."
        },
    )
    support_refresh_every: int | None = field(
        default=None,
        metadata={"help": "Fixed support only: re-choose the support every R optimizer steps (None: never)."},
    )
    support_block: float | None = field(
        default=None,
        metadata={
            "help": "Confine every support (fixed or dynamic) to a block of support_block·k coefficients: "
            "the rows and columns of the HOSVD basis where the basis phase's gradient has the most energy. "
            "The backward and the weight update then cost in proportion to the block's rows and columns, "
            "not to how far an unconfined top-k spreads. None: unconfined (the paper)."
        },
    )
    max_delta_density: float | None = field(
        default=None,
        metadata={
            "help": "Dynamic support only: bound the saved delta to this share of each layer's coefficients "
            "(the union of every step's top-k). Once a layer's delta would outgrow it, only the best "
            "newcomers fill the room left, then the support is frozen: later steps pick their k among the "
            "delta's own entries. Must be >= density. None: unbounded (a run touches 16-41% on MiniLM)."
        },
    )
    basis_steps: int = field(
        default=10, metadata={"help": "Gradient steps of the preliminary phase that builds the HOSVD basis."}
    )
    basis_probe_steps: int = field(
        default=0,
        metadata={
            "help": "Before the basis phase, fit the task head alone (Adam, lr 1e-3) for this many steps on "
            "the basis batches, so the basis gradients come through a fitted head instead of a random one; "
            "the head's weights are restored afterwards. 0: off (the paper)."
        },
    )
    per_layer_basis: bool = field(
        default=False,
        metadata={"help": "One (P, Q) per layer instead of one per group (all up layers, all down layers)."},
    )
    train_head: bool | None = field(
        default=None,
        metadata={
            "help": "Train the task head densely (classifier / score / pooler). None: True for "
            "classification, "
            "False for a causal LM's lm_head."
        },
    )
    train_layernorm: bool = field(
        default=False, metadata={"help": "Also train LayerNorm/RMSNorm weights densely."}
    )
    train_bias: bool = field(
        default=False, metadata={"help": "Also train every bias vector densely (BitFit-style)."}
    )
    train_rest_dense: bool = field(
        default=False,
        metadata={"help": "Train everything that is not a target layer densely (the paper's GLUE setup)."},
    )
    include_gate_proj: bool = field(
        default=False, metadata={"help": "LLaMA family: also target mlp.gate_proj (its own group)."}
    )
    layers: list[int] | None = field(
        default=None,
        metadata={"help": "Only target these block indices (e.g. every third); None: all blocks."},
    )
    task: Task | None = field(
        default=None, metadata={"help": "'classification' or 'causal_lm'; None: inferred from the model."}
    )
    labels: list[str] | None = field(
        default=None,
        metadata={"help": "Label names in class-id order (classification), saved with the delta."},
    )
    base_model_id: str | None = field(
        default=None, metadata={"help": "Name or path of the base model, recorded in the delta."}
    )

    def __post_init__(self) -> None:
        if isinstance(self.density, bool) or not isinstance(self.density, int | float):
            raise ValueError(f"density must be a number in (0, 1], got {self.density!r}")
        if not 0.0 < float(self.density) <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {self.density}")
        self.density = float(self.density)
        if isinstance(self.target_modules, str):
            if self.target_modules != "auto":
                try:
                    re.compile(self.target_modules)
                except re.error as exc:
                    raise ValueError(f"target_modules is not 'auto' nor a valid regex: {exc}") from exc
        elif isinstance(self.target_modules, list | tuple):
            if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
                raise ValueError("target_modules list must hold non-empty module names or suffixes")
            self.target_modules = list(self.target_modules)
        else:
            raise ValueError(
                f"target_modules must be 'auto', a regex or a list of names, got {self.target_modules!r}"
            )
        if self.support not in ("dynamic", "fixed"):
            raise ValueError(f"support must be 'dynamic' or 'fixed', got {self.support!r}")
        if self.selection not in ("gradient", "adam"):
            raise ValueError(f"selection must be 'gradient' or 'adam', got {self.selection!r}")
        if self.selection == "adam" and self.support != "dynamic":
            raise ValueError("selection='adam' applies to support='dynamic' only")
        if self.bias_correction not in ("global", "entry"):
            raise ValueError(f"bias_correction must be 'global' or 'entry', got {self.bias_correction!r}")
        if self.support_block is not None:
            if isinstance(self.support_block, bool) or not isinstance(self.support_block, int | float):
                raise ValueError(f"support_block must be a number >= 1 or None, got {self.support_block!r}")
            if self.support_block < 1:
                raise ValueError(f"support_block must be >= 1 (a block holds k), got {self.support_block}")
            self.support_block = float(self.support_block)
        if self.max_delta_density is not None:
            cap = self.max_delta_density
            if isinstance(cap, bool) or not isinstance(cap, int | float) or not 0.0 < float(cap) <= 1.0:
                raise ValueError(f"max_delta_density must be a number in (0, 1] or None, got {cap!r}")
            if self.support != "dynamic":
                raise ValueError(
                    "max_delta_density applies to support='dynamic' only (fixed holds k entries)"
                )
            if cap < self.density:
                raise ValueError(
                    f"max_delta_density ({cap}) must be >= density ({self.density}): a step moves k entries"
                )
            self.max_delta_density = float(cap)
        if self.support_refresh_every is not None:
            if self.support != "fixed":
                raise ValueError("support_refresh_every applies to support='fixed' only")
            if isinstance(self.support_refresh_every, bool) or int(self.support_refresh_every) < 1:
                raise ValueError(f"support_refresh_every must be >= 1, got {self.support_refresh_every}")
        if (
            isinstance(self.basis_steps, bool)
            or not isinstance(self.basis_steps, int)
            or self.basis_steps < 1
        ):
            raise ValueError(f"basis_steps must be an integer >= 1, got {self.basis_steps!r}")
        probe = self.basis_probe_steps
        if isinstance(probe, bool) or not isinstance(probe, int) or probe < 0:
            raise ValueError(f"basis_probe_steps must be an integer >= 0, got {probe!r}")
        if self.layers is not None:
            if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.layers):
                raise ValueError(f"layers must be non-negative block indices, got {self.layers!r}")
            if not self.layers:
                raise ValueError("layers must not be empty (use None for all blocks)")
            self.layers = sorted(set(self.layers))
        if self.task is not None and self.task not in ("classification", "causal_lm"):
            raise ValueError(f"task must be 'classification' or 'causal_lm', got {self.task!r}")
        if self.labels is not None and not all(isinstance(x, str) for x in self.labels):
            raise ValueError("labels must be a list of label names (strings) in class-id order")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (saved in adapter_config.json)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SparseGradConfig:
        """Inverse of `to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SparseGradConfig field(s): {unknown}")
        return cls(**data)

    @staticmethod
    def help() -> dict[str, str]:
        """Field name -> help text."""
        return {f.name: str(f.metadata.get("help", "")) for f in fields(SparseGradConfig)}
