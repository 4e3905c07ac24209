"""Memory model: bytes of weights, gradients, optimizer state, basis and activations per method, from the same
formulas the code follows (pure Python, no torch). `python -m bench.memory` prints it; the engine's budget
rule (`training.budget`) and `save_delta`'s choice of encoding call it.

Per target layer (D_out, D_in), k = round(density·D_out·D_in):
- dL/dC: float32, over D_out·D_in (dynamic support, unconfined) or over the fixed support or the block
  only: `coef_grad_bytes`.
- optimizer: the paper's rule keeps 24 B (float32 m, v, step, ΔC and an int64 index) for every entry ever
  selected (k for a fixed support, union·D_out·D_in for a dynamic one); selection="adam" keeps dense
  float32 moments over every candidate (8 B each, the block's area in a block); `optimizer_bytes`.
- basis: float32 P (D_out²) and Q (D_in²) per group of same-shaped layers: `basis_bytes`. The basis phase
  holds every group's two Gram sums together, in float64 (twice `basis_bytes`; each is freed once its
  eigenvectors exist), beside the model's weights, one basis batch's activations and the target layers'
  weight gradients; it is not part of `estimate`, which models the training steps.
- side path (frozen bf16 weights): ΔC over the touched rows × columns in float32.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

F32 = 4
SUPPORT_POSITIONS = 2 * 8  # a fixed support's row and column positions (int64), kept with it
SPARSE_STATE_ENTRY = 4 * F32 + 8  # exp_avg, exp_avg_sq, step, ΔC + int64 index
DELTA_COO_ENTRY = 12  # the saved delta: int32 row, int32 col, float32 value


@dataclass(frozen=True)
class Choice:
    """What SparseGrad's memory depends on."""

    density: float = 0.01
    support: str = "dynamic"  # dynamic | fixed
    selection: str = "gradient"  # gradient | adam
    support_block: float | None = None  # block area as a multiple of k
    union: float = 0.16  # share of coefficients a dynamic support touches over a run (measured: 0.10-0.41)

    def describe(self) -> str:
        block = f" in a {self.support_block:g}k block" if self.support_block else ""
        rule = f", selection {self.selection}" if self.support == "dynamic" else ""
        return f"support {self.support}{block}{rule}"


def k_of(d_out: int, d_in: int, density: float) -> int:
    return max(1, round(density * d_out * d_in))


def matched_lora_rank(layers: Iterable[tuple[int, int]], density: float) -> int:
    """LoRA rank whose trainable parameters on `layers`, Σ r·(D_out + D_in), best match SparseGrad's Σ k
    (at least 1)."""
    shapes = list(layers)
    k_total = sum(k_of(d_out, d_in, density) for d_out, d_in in shapes)
    return max(1, round(k_total / sum(d_out + d_in for d_out, d_in in shapes)))


def candidates(d_out: int, d_in: int, choice: Choice) -> int:
    """Coefficients a step may pick from: all, or the block's area."""
    n = d_out * d_in
    if choice.support_block is None:
        return n
    return min(n, int(choice.support_block * k_of(d_out, d_in, choice.density) + 0.999))


def coef_grad_bytes(d_out: int, d_in: int, choice: Choice) -> int:
    """dL/dC held between backward and the optimizer step: float32 over the layer, or over its fixed support
    or block only (a flat placeholder), plus, for a fixed support, its positions (Support: 16 B per entry)."""
    if choice.support == "fixed":
        return (F32 + SUPPORT_POSITIONS) * k_of(d_out, d_in, choice.density)
    if choice.support_block is not None:
        return F32 * candidates(d_out, d_in, choice)
    return F32 * d_out * d_in


def optimizer_bytes(d_out: int, d_in: int, choice: Choice) -> int:
    """Sparse AdamW state of one layer (see SparseGradAdamW)."""
    k = k_of(d_out, d_in, choice.density)
    if choice.support == "fixed":
        return SPARSE_STATE_ENTRY * k
    if choice.selection == "adam":
        return 2 * F32 * candidates(d_out, d_in, choice)
    entries = max(k, round(choice.union * candidates(d_out, d_in, choice)))
    return SPARSE_STATE_ENTRY * entries


def basis_bytes(layers: Iterable[tuple[int, int]]) -> int:
    """float32 P and Q per distinct layer shape (one basis per group of same-shaped layers)."""
    return sum(F32 * (d_out * d_out + d_in * d_in) for d_out, d_in in set(layers))


def side_path_bytes(d_out: int, d_in: int, choice: Choice) -> int:
    """ΔC over the touched rows × columns, float32 (frozen low-precision weights; the basis columns it uses
    are gathered per call, one layer at a time).
    Rows and columns of a block of area A: about sqrt(A·D_out/D_in) × sqrt(A·D_in/D_out) (`support_block`);
    a dynamic unconfined support reaches every row and column."""
    if choice.support_block is None and choice.support == "dynamic":
        rows, cols = d_out, d_in
    else:
        area = candidates(d_out, d_in, choice) if choice.support_block else k_of(d_out, d_in, choice.density)
        rows = min(d_out, max(1, round((area * d_out / d_in) ** 0.5)))
        cols = min(d_in, max(1, round(area / rows)))
    return F32 * rows * cols


def delta_coo_bytes(nnz: int, d_out: int, n_rows: int, d_in: int, n_cols: int, rotated: bool) -> int:
    """A delta of format version 3 (COO): the entries plus the basis columns they reference."""
    return DELTA_COO_ENTRY * nnz + (F32 * (d_out * n_rows + d_in * n_cols) if rotated else 0)


def delta_dense_bytes(layers: Iterable[tuple[int, int]], value_bytes: int = F32) -> int:
    return sum(value_bytes * d_out * d_in for d_out, d_in in layers)


# The saved delta (format version 4, docs/delta-format.md). A group of layers sharing one basis stores the
# basis columns its entries reference, rows R and columns C (their union over the group's layers), and per
# layer ΔC on the local |R| x |C| grid in the smallest of three lossless forms; or, when that is smaller,
# each layer's dense ΔW. `save_delta` chooses with these functions; the bench feeds them measured fractions.
LAYER_ENCODINGS = ("csr", "bitmap", "block")


def local_index_bytes(n_cols: int) -> int:
    """Width of a local column index (uint8, int16, int32) for a grid of `n_cols` columns."""
    return 1 if n_cols <= 256 else 2 if n_cols <= 32768 else 4


def layer_encoding_bytes(nnz: int, n_rows: int, n_cols: int, value_bytes: int = F32) -> dict[str, int]:
    """Bytes of one layer's ΔC on the local grid in each form: "csr" (int32 row pointers, narrow local
    column indices, values), "bitmap" (one bit per grid cell, then the values in row-major order), "block"
    (every grid cell's value)."""
    cells = n_rows * n_cols
    return {
        "csr": 4 * (n_rows + 1) + (local_index_bytes(n_cols) + value_bytes) * nnz,
        "bitmap": (cells + 7) // 8 + value_bytes * nnz,
        "block": value_bytes * cells,
    }


def basis_columns_bytes(
    d_out: int, n_rows: int, d_in: int, n_cols: int, rotated: bool, value_bytes: int
) -> int:
    """The group's column numbers (int32) and, for a rotated basis, P's and Q's referenced columns."""
    return 4 * (n_rows + n_cols) + (value_bytes * (d_out * n_rows + d_in * n_cols) if rotated else 0)


def delta_group_bytes(
    d_out: int,
    d_in: int,
    nnz: list[int],
    n_rows: int,
    n_cols: int,
    rotated: bool = True,
    value_bytes: int = F32,
    basis_bytes: int | None = None,
) -> tuple[str, int]:
    """("sparse" | "dense", bytes) of a group of same-shaped layers (one nnz each): the sparse form (basis
    columns, `basis_bytes` each (default `value_bytes`), + each layer's smallest encoding) or dense ΔW per
    layer, whichever is smaller; with 16-bit values, dense ΔW only where the basis is stored in the values'
    width too (a bf16 basis and bf16 ΔC are exact, their product rounded to 16 bits is not)."""
    basis_bytes = value_bytes if basis_bytes is None else basis_bytes
    sparse = basis_columns_bytes(d_out, n_rows, d_in, n_cols, rotated, basis_bytes) + sum(
        min(layer_encoding_bytes(z, n_rows, n_cols, value_bytes).values()) for z in nnz
    )
    dense = delta_dense_bytes([(d_out, d_in)] * len(nnz), value_bytes)
    exact_sparse = rotated and value_bytes < F32 and basis_bytes <= value_bytes
    return ("sparse", sparse) if sparse <= dense or exact_sparse else ("dense", dense)


@dataclass(frozen=True)
class ModelShape:
    """A transformer's sizes: enough to count parameters, target layers and activations."""

    name: str
    kind: str  # llama | bert
    d_model: int
    d_ff: int
    n_layers: int
    vocab: int
    n_heads: int
    n_kv_heads: int
    tied_embeddings: bool = True

    @property
    def params(self) -> int:
        d, f, kv = self.d_model, self.d_ff, self.d_model * self.n_kv_heads // self.n_heads
        attn = 2 * d * d + 2 * d * kv
        mlp = (3 if self.kind == "llama" else 2) * d * f
        emb = self.vocab * d * (1 if self.tied_embeddings else 2)
        return self.n_layers * (attn + mlp + 2 * d) + emb + d

    def targets(self) -> list[tuple[int, int]]:
        """(D_out, D_in) of the default target layers: MLP up and down of every block."""
        return [(self.d_ff, self.d_model), (self.d_model, self.d_ff)] * self.n_layers


SHAPES = {
    s.name: s
    for s in (
        ModelShape("llama-7b", "llama", 4096, 11008, 32, 32000, 32, 32, tied_embeddings=False),
        ModelShape("smollm2-135m", "llama", 576, 1536, 30, 49152, 9, 3),
        ModelShape("minilm", "bert", 384, 1536, 6, 30522, 12, 12),
    )
}


@dataclass
class Estimate:
    """Bytes by category for one method."""

    method: str
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())


LOGIT_BYTES = 10  # per token and vocabulary entry at the loss (bf16 logits, their float32 copy, log-softmax
# and gradients, not all alive at once): LoRA's peak on SmolLM2-135M on CPU grew 1.15 MiB per token from
# 256 to 1,024 tokens (bench.memory --measure), 0.66 of it the blocks' formula below


def activation_bytes(shape: ModelShape, batch: int, seq: int, act_bytes: int) -> int:
    """Tensors saved for backward: per token and block about 8·d + 2·d_kv + 4·d_ff values (norms, q/k/v,
    attention output, residuals, MLP input, gate/up outputs and their product) in the compute dtype, plus
    the loss's tensors over the vocabulary (LOGIT_BYTES per entry)."""
    tokens = batch * seq
    kv = shape.d_model * shape.n_kv_heads // shape.n_heads
    per_block = 8 * shape.d_model + 2 * kv + 4 * shape.d_ff
    return tokens * shape.n_layers * per_block * act_bytes + tokens * shape.vocab * LOGIT_BYTES


def estimate(
    shape: ModelShape,
    method: str,
    choice: Choice,
    *,
    frozen_bytes: int = F32,
    act_bytes: int = 2,
    batch: int = 4,
    seq: int = 512,
    lora_rank: int | None = None,
) -> Estimate:
    """Memory of training `shape` with `method` (sparsegrad | lora | full) at one precision: frozen weights
    stored in `frozen_bytes` (4: float32, 2: bf16), activations in `act_bytes` (2 under bf16 autocast)."""
    targets = shape.targets()
    params = shape.params
    acts = activation_bytes(shape, batch, seq, act_bytes)
    if method == "full":
        return Estimate(
            method, {"weights": F32 * params, "gradients": F32 * params, "optimizer": 2 * F32 * params,
                     "activations": acts}
        )  # fmt: skip
    if method == "lora":
        rank = lora_rank or matched_lora_rank(targets, choice.density)
        adapters = sum(rank * (o + i) for o, i in targets)
        return Estimate(
            method,
            {"weights": frozen_bytes * params + F32 * adapters, "gradients": F32 * adapters,
             "optimizer": 2 * F32 * adapters, "activations": acts},
        )  # fmt: skip
    parts = {
        "weights": frozen_bytes * params,
        "gradients": sum(coef_grad_bytes(o, i, choice) for o, i in targets),
        "optimizer": sum(optimizer_bytes(o, i, choice) for o, i in targets),
        "basis": basis_bytes(targets),
        "activations": acts,
    }
    if frozen_bytes < F32:
        parts["side path"] = sum(side_path_bytes(o, i, choice) for o, i in targets)
    return Estimate("sparsegrad", parts)


def sparse_extra_bytes(layers: list[tuple[int, int]], choice: Choice, side_path: bool = False) -> int:
    """What SparseGrad adds beyond the frozen model: dL/dC, optimizer state, basis and, for low-precision
    weights, the side path (the budget rule)."""
    per_layer = sum(coef_grad_bytes(o, i, choice) + optimizer_bytes(o, i, choice) for o, i in layers)
    side = sum(side_path_bytes(o, i, choice) for o, i in layers) if side_path else 0
    return per_layer + side + basis_bytes(layers)
