"""The SparseGrad autograd function and the two pieces of basis algebra it needs.

Algebra (W: (D_out, D_in), P: (D_out, D_out), Q: (D_in, D_in), both orthogonal):
    C = Pᵀ W Q,   W = P C Qᵀ,   dL/dC = Pᵀ (dL/dW) Q = (dY P)ᵀ (X Q).
The forward runs in the original basis with plain W (F.linear, same cost as the frozen model); W is kept in
sync by `apply_sparse_update` after each optimizer step. P or Q may be None (identity: MeProp).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from sparsegrad.sidepath import DeltaPath

# Slice out all-zero rows of dY (padding tokens) only when at least this fraction of rows is zero: the
# gather costs a copy, which pays off only when it removes real work.
_SKIP_ROWS_MIN_FRACTION = 0.05


def column_major(m: torch.Tensor) -> torch.Tensor:
    """`m` with its columns contiguous in memory (the transpose of a contiguous matrix), same values. Bases
    are kept this way: picking some of their columns (`basis_columns`) is then a copy of whole rows of
    memory, about 3x faster than gathering strided columns."""
    return m if m.t().is_contiguous() else m.t().contiguous().t()


def basis_columns(m: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """m[:, idx], as a column-major matrix when `m` is one (the fast case)."""
    if m.t().is_contiguous():
        return m.t().index_select(0, idx).t()
    return m.index_select(1, idx)


def coefficient_grad(
    gy: torch.Tensor,
    x: torch.Tensor,
    p: torch.Tensor | None,
    q: torch.Tensor | None,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """dL/dC = Pᵀ (gyᵀ x) Q for gy: (N, D_out), x: (N, D_in), P: (D_out, r), Q: (D_in, c); returns (r, c).

    The products run in `compute_dtype`: under autocast its dtype (bf16 inputs, float32 accumulation, as the
    frozen layers' own products), else float32 (or the basis's, if wider).

    P and Q are the whole bases (r = D_out, c = D_in) or some of their columns (a fixed support's rows and
    columns). Two exact orders; picks the cheaper in multiply-adds:
      factor first: (gy P)ᵀ (x Q)   ~ N·(D_out·r + D_in·c + r·c)
      dW first:     Pᵀ (gyᵀ x) Q    ~ N·D_out·D_in + r·D_out·D_in + r·D_in·c
    """
    n, d_out = gy.shape
    d_in = x.shape[1]
    if compute_dtype is None:  # at least float32, and the basis's precision
        compute_dtype = p.dtype if p is not None else (q.dtype if q is not None else torch.float32)
        compute_dtype = torch.promote_types(compute_dtype, gy.dtype)
    gy, x = gy.to(compute_dtype), x.to(compute_dtype)
    p = p.to(compute_dtype) if p is not None else None
    q = q.to(compute_dtype) if q is not None else None
    r = p.shape[1] if p is not None else d_out
    c = q.shape[1] if q is not None else d_in
    factor_first = n * ((d_out * r if p is not None else 0) + (d_in * c if q is not None else 0) + r * c)
    dense_first = (
        n * d_out * d_in + (r * d_out * d_in if p is not None else 0) + (r * d_in * c if q is not None else 0)
    )
    if factor_first < dense_first:
        a = gy @ p if p is not None else gy  # (N, r)
        b = x @ q if q is not None else x  # (N, c)
        return a.t() @ b
    g = gy.t() @ x  # (D_out, D_in)
    if p is not None:
        g = p.t() @ g
    if q is not None:
        g = g @ q
    return g


class Support:
    """A set of flat coefficient indices into (D_out, D_in), split into its distinct rows and columns.

    `flat` (k,) sorted; `rows`, `cols` distinct and sorted; `row_pos`, `col_pos` (k,) each entry's position
    in `rows` / `cols`. A block (`Support.block`: every entry of rows × cols) stores only its rows and columns
    and derives the other three when asked: they would cost 24 bytes per entry to keep.
    """

    __slots__ = ("_col_pos", "_flat", "_row_pos", "cols", "d_in", "rows")

    def __init__(
        self,
        flat: torch.Tensor | None,
        rows: torch.Tensor,
        cols: torch.Tensor,
        row_pos: torch.Tensor | None,
        col_pos: torch.Tensor | None,
        d_in: int = 0,
    ) -> None:
        self._flat, self.rows, self.cols, self._row_pos, self._col_pos = flat, rows, cols, row_pos, col_pos
        self.d_in = d_in

    @property
    def is_block(self) -> bool:
        return self._flat is None

    @property
    def flat(self) -> torch.Tensor:
        if self._flat is not None:
            return self._flat
        return (self.rows.unsqueeze(1) * self.d_in + self.cols.unsqueeze(0)).reshape(-1)

    @property
    def row_pos(self) -> torch.Tensor:
        if self._row_pos is not None:
            return self._row_pos
        return torch.arange(self.rows.numel(), device=self.rows.device).repeat_interleave(self.cols.numel())

    @property
    def col_pos(self) -> torch.Tensor:
        if self._col_pos is not None:
            return self._col_pos
        return torch.arange(self.cols.numel(), device=self.rows.device).repeat(self.rows.numel())

    def __len__(self) -> int:
        return self.rows.numel() * self.cols.numel() if self._flat is None else self._flat.numel()

    def to(self, device: torch.device) -> Support:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        rows, cols = self.rows.to(device), self.cols.to(device)
        return Support(move(self._flat), rows, cols, move(self._row_pos), move(self._col_pos), self.d_in)

    @classmethod
    def of(cls, index: torch.Tensor, d_in: int) -> Support:
        rows, row_pos = torch.unique(index // d_in, sorted=True, return_inverse=True)
        cols, col_pos = torch.unique(index % d_in, sorted=True, return_inverse=True)
        return cls(index, rows, cols, row_pos, col_pos, d_in)

    @classmethod
    def block(cls, rows: torch.Tensor, cols: torch.Tensor, d_in: int) -> Support:
        """Every entry of rows × cols (both sorted): flat indices sorted, row-major."""
        return cls(None, rows, cols, None, None, d_in)


def support_values(
    gy: torch.Tensor,
    x: torch.Tensor,
    p: torch.Tensor | None,
    q: torch.Tensor | None,
    support: Support,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """dL/dC at `support.flat`, (k,): the (rows × cols) block of it through the support's basis columns,
    which costs a fraction of the dense dL/dC when the support is clustered."""
    if p is None:
        gy, p_r = gy.index_select(1, support.rows), None
    else:
        p_r = basis_columns(p, support.rows)
    if q is None:
        x, q_c = x.index_select(1, support.cols), None
    else:
        q_c = basis_columns(q, support.cols)
    block = coefficient_grad(gy, x, p_r, q_c, compute_dtype)  # (|rows|, |cols|)
    if support.is_block:
        return block.reshape(-1)  # row-major: the order of support.flat
    return block[support.row_pos, support.col_pos]


def support_grad(
    gy: torch.Tensor,
    x: torch.Tensor,
    p: torch.Tensor | None,
    q: torch.Tensor | None,
    support: Support,
    shape: tuple[int, int],
) -> torch.Tensor:
    """dL/dC on the support only, as a sparse COO (D_out, D_in) (a real, not placeholder, coefficient)."""
    values = support_values(gy, x, p, q, support)
    flat = support.flat  # sorted and unique: the entries are already coalesced
    coo = torch.stack([flat // shape[1], flat % shape[1]])
    return torch.sparse_coo_tensor(coo, values, shape, is_coalesced=True, check_invariants=False)


def values_at(grad: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """A gradient at sorted flat `index` (zeros where it has none): a (D_out, D_in) one, dense or sparse COO,
    or a layer's flat (k,) gradient on its support, which is `index` itself."""
    if grad.dim() == 1:
        if grad.numel() != index.numel():
            raise ValueError(f"a gradient of {grad.numel()} support values read at {index.numel()} entries")
        return grad
    if not grad.is_sparse:
        return grad.reshape(-1)[index]
    grad = grad.coalesce()  # no-op for one backward; sums the parts of accumulated micro-batches
    ij = grad.indices()
    at = ij[0] * grad.shape[1] + ij[1]  # sorted: coalesced entries are in row-major order
    if torch.equal(at, index):  # the usual case: the gradient lives exactly on `index`
        return grad.values()
    return grad.to_dense().reshape(-1)[index]


def apply_sparse_update(
    weight: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    values: torch.Tensor,
    p: torch.Tensor | None,
    q: torch.Tensor | None,
) -> None:
    """weight += P S Qᵀ in place, S sparse with distinct entries (rows, cols, values).

    P: (D_out, r) and Q: (D_in, c) are whole bases or some of their columns (`rows`/`cols` then index those
    columns); None is the identity. One sparse (CSR) product on the larger side (cost k·D), one dense product
    over the smaller of r, c (D_out·D_in·min(r, c)).
    """
    if values.numel() == 0:
        return
    if p is None and q is None:
        weight.index_put_((rows, cols), values.to(weight.dtype), accumulate=True)
        return
    d_out, d_in = weight.shape
    r = p.shape[1] if p is not None else d_out
    c = q.shape[1] if q is not None else d_in
    vals = values.to(p.dtype if p is not None else q.dtype)  # type: ignore[union-attr]
    if q is None or (p is not None and c <= r):
        assert p is not None
        ps = (_csr(cols, rows, vals, c, r) @ p.t()).t()  # (Sᵀ Pᵀ)ᵀ = P S: (D_out, c)
        delta = ps if q is None else ps @ q.t()
    else:
        sq = _csr(rows, cols, vals, r, c) @ q.t()  # S Qᵀ: (r, D_in)
        delta = sq if p is None else p @ sq
    weight.add_(delta.to(weight.dtype))


def apply_support_update(
    weight: torch.Tensor,
    support: Support,
    values: torch.Tensor,
    p: torch.Tensor | None,
    q: torch.Tensor | None,
) -> None:
    """weight += P S Qᵀ for S on `support` (values in the order of `support.flat`), through only the support's
    basis columns: the dense product costs D_out·D_in·min(|rows|, |cols|), not ·min(D_out, D_in)."""
    p_r = basis_columns(p, support.rows) if p is not None else None
    q_c = basis_columns(q, support.cols) if q is not None else None
    rows = support.row_pos if p is not None else support.rows[support.row_pos]
    cols = support.col_pos if q is not None else support.cols[support.col_pos]
    apply_sparse_update(weight, rows, cols, values, p_r, q_c)


def _csr(row: torch.Tensor, col: torch.Tensor, val: torch.Tensor, n_rows: int, n_cols: int) -> torch.Tensor:
    """A CSR matrix from distinct (row, col, val) entries. CSR, not COO: on CPU the COO product is about
    8x slower on the clustered supports the HOSVD basis produces."""
    order = torch.argsort(row * n_cols + col)
    row, col, val = row[order], col[order], val[order]
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=row.device)
    crow[1:] = torch.cumsum(torch.bincount(row, minlength=n_rows), 0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, val, (n_rows, n_cols), check_invariants=False)


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype active for `device_type`, or None."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


class SparseGradFunction(torch.autograd.Function):
    """Y = X (W + P A Qᵀ)ᵀ + b with gradient dL/dA = Pᵀ (dL/dW) Q, (D_out, D_in).

    In training A is a zero-stride placeholder (`coef_is_zero=True`): the live coefficients are folded into W,
    or, for a frozen low-precision W, carried by `side` (a DeltaPath adding x ΔWᵀ), so the forward is plain
    F.linear (+ the side path). With a real A (gradcheck) the same backward is exercised. Rows of dY that are
    all zero (padding) are skipped in every backward product. With a `support` (a fixed support the optimizer
    never re-chooses, or a support block), dL/dA is computed on it only: the values at `support.flat` when
    `coef` is a flat placeholder over the support (training), else a sparse COO (D_out, D_in).

    Mixed precision: under autocast the forward product runs in the autocast dtype (as nn.Linear's would), the
    input is saved in that dtype, and dL/dX and the products of dL/dA run in it (float32 accumulation); dL/dA
    itself, the basis, ΔC, the optimizer and the weight sync stay float32.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        coef: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        p: torch.Tensor | None,
        q: torch.Tensor | None,
        coef_is_zero: bool,
        support: Support | None = None,
        side: DeltaPath | None = None,
    ) -> torch.Tensor:
        w = weight
        if not coef_is_zero:
            a = coef
            if p is not None:
                a = p @ a
            if q is not None:
                a = a @ q.t()
            w = weight + a
        cast = _autocast_dtype(x.device.type)
        y = F.linear(x, w, bias)  # autocast casts x, w and b as it would for nn.Linear
        xs = x.to(cast) if cast is not None else x  # (…, D_in) in the dtype the product used
        if side is not None:
            y = y + side.output(xs.to(y.dtype), p, q)
        ctx.save_for_backward(xs, w, p, q)
        ctx.x_dtype = x.dtype
        ctx.compute_dtype = cast
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.coef_dtype = coef.dtype
        ctx.coef_shape = tuple(coef.shape)
        ctx.support = support
        ctx.side = side
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w, p, q = ctx.saved_tensors
        need_x, need_coef, _, need_bias = ctx.needs_input_grad[:4]
        d_out, d_in = w.shape
        gy2 = gy.reshape(-1, d_out)  # (N, D_out)
        x2 = x.reshape(-1, d_in)  # (N, D_in)
        n = gy2.shape[0]
        keep = torch.count_nonzero(gy2, dim=1) > 0  # (N,) rows that carry gradient
        n_keep = int(keep.sum())
        sliced = n_keep <= n * (1.0 - _SKIP_ROWS_MIN_FRACTION)
        if sliced:
            idx = keep.nonzero().squeeze(1)
            gy2 = gy2.index_select(0, idx)
            x2 = x2.index_select(0, idx)
        gx = gcoef = gb = None
        if need_x:
            gxk = gy2 @ w.to(gy2.dtype)  # (N_keep, D_in); w is cast per layer, never kept
            if ctx.side is not None:
                gxk = gxk + ctx.side.input_grad(gy2, p, q)
            if sliced:
                gx = gy2.new_zeros(n, d_in).index_copy_(0, idx, gxk)
            else:
                gx = gxk
            gx = gx.reshape(*x.shape[:-1], d_in).to(ctx.x_dtype)
        if need_coef:
            if ctx.support is None:
                gcoef = coefficient_grad(gy2, x2, p, q, ctx.compute_dtype)
            elif len(ctx.coef_shape) == 1:  # a placeholder over the support: its values, 4 bytes each
                gcoef = support_values(gy2, x2, p, q, ctx.support, ctx.compute_dtype)
            else:
                gcoef = support_grad(gy2, x2, p, q, ctx.support, (d_out, d_in))
            gcoef = gcoef.to(ctx.coef_dtype)
        if need_bias and ctx.bias_dtype is not None:
            gb = gy2.sum(dim=0, dtype=torch.float32).to(ctx.bias_dtype)  # bias gradient in the original space
        return gx, gcoef, None, gb, None, None, None, None, None
