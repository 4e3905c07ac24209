"""ΔW kept beside a frozen low-precision weight: an extra forward path through the basis columns ΔC uses.

A bf16 weight cannot take the small per-step changes W += P ΔC Qᵀ: most round away (at lr 1e-4 about 80% of
the update norm on a tiny LLaMA). So when the base weight is stored in low precision it never changes during
training; the layer computes

    y = x Wᵀ + x ΔWᵀ,   x ΔWᵀ = ((x Q_C) ΔC_RCᵀ) P_Rᵀ                      x: (N, D_in), y: (N, D_out)

where R and C are the rows and columns of ΔC that some update touched, ΔC_RC (|R|, |C|) is kept dense in
float32 and P_R = P[:, R], Q_C = Q[:, C]. The trained model is then exactly base + ΔW, the model that the
saved delta merges into, up to the one rounding of the merged sum. Cost per call N·(D_in·|C| + |C|·|R| +
|R|·D_out): small for a fixed support or a support block, up to a few dense products once an unconfined
dynamic support has touched every row and column.
"""

from __future__ import annotations

import torch

from sparsegrad.function import Support, basis_columns


class DeltaPath:
    """ΔC restricted to its touched rows × columns, and the products that apply it (P, Q None: identity)."""

    def __init__(
        self,
        d_out: int,
        d_in: int,
        device: torch.device,
        dtype: torch.dtype,
        region: Support | None = None,
    ) -> None:
        """An empty path; with a `region` (the rows × columns every update will stay in: a support block, a
        fixed support) its ΔC is laid out over them from the start, so updates on a Support sharing those
        rows and columns land without a search (`add`)."""
        self.d_out, self.d_in = d_out, d_in
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        self.rows = region.rows if region is not None else empty
        self.cols = region.cols if region is not None else empty
        self.block = torch.zeros(self.rows.numel(), self.cols.numel(), dtype=dtype, device=device)

    @classmethod
    def of(
        cls,
        index: torch.Tensor,
        values: torch.Tensor,
        d_out: int,
        d_in: int,
        dtype: torch.dtype,
        region: Support | None = None,
    ) -> DeltaPath:
        """The path of a whole ΔC given as flat indices and values."""
        path = cls(d_out, d_in, values.device, dtype, region)
        path.add(index, values)
        return path

    def add(self, index: torch.Tensor, values: torch.Tensor, support: Support | None = None) -> None:
        """ΔC[index] += values (flat int64 indices into (D_out, D_in), distinct). `support`, the Support of
        `index` when the caller has it: one sharing this path's rows and columns gives the positions."""
        if index.numel() == 0:
            return
        if support is not None and support.rows is self.rows and support.cols is self.cols:
            self.block.index_put_(
                (support.row_pos, support.col_pos), values.to(self.block.dtype), accumulate=True
            )
            return
        r, c = index // self.d_in, index % self.d_in
        rows = torch.unique(torch.cat([self.rows, r]))
        cols = torch.unique(torch.cat([self.cols, c]))
        if rows.numel() != self.rows.numel() or cols.numel() != self.cols.numel():
            grown = self.block.new_zeros(rows.numel(), cols.numel())
            old_r = torch.searchsorted(rows, self.rows)
            old_c = torch.searchsorted(cols, self.cols)
            grown[old_r.unsqueeze(1), old_c.unsqueeze(0)] = self.block
            self.rows, self.cols, self.block = rows, cols, grown
        pos_r = torch.searchsorted(self.rows, r)
        pos_c = torch.searchsorted(self.cols, c)
        self.block.index_put_((pos_r, pos_c), values.to(self.block.dtype), accumulate=True)

    def _columns(
        self, p: torch.Tensor | None, q: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(P_R, Q_C), gathered per call and never kept: a copy of D_out·|R| + D_in·|C| values, 1/N of the
        products that use it, where keeping it would hold per-layer copies of most of a shared basis."""
        p_r = None if p is None else (p if self.rows.numel() == self.d_out else basis_columns(p, self.rows))
        q_c = None if q is None else (q if self.cols.numel() == self.d_in else basis_columns(q, self.cols))
        return p_r, q_c

    def output(self, x: torch.Tensor, p: torch.Tensor | None, q: torch.Tensor | None) -> torch.Tensor:
        """x ΔWᵀ for x (..., D_in), in x's dtype (the autocast dtype under autocast)."""
        if self.block.numel() == 0:
            return x.new_zeros(*x.shape[:-1], self.d_out)
        p_r, q_c = self._columns(p, q)
        dt = x.dtype
        a = x @ q_c.to(dt) if q_c is not None else x.index_select(-1, self.cols)  # (..., |C|)
        b = a @ self.block.t().to(dt)  # (..., |R|)
        if p_r is not None:
            return b @ p_r.t().to(dt)  # (..., D_out)
        return b.new_zeros(*b.shape[:-1], self.d_out).index_copy_(-1, self.rows, b)

    def input_grad(self, gy: torch.Tensor, p: torch.Tensor | None, q: torch.Tensor | None) -> torch.Tensor:
        """dL/dx through the path, gy ΔW, for gy (N, D_out)."""
        if self.block.numel() == 0:
            return gy.new_zeros(gy.shape[0], self.d_in)
        p_r, q_c = self._columns(p, q)
        dt = gy.dtype
        a = gy @ p_r.to(dt) if p_r is not None else gy.index_select(1, self.rows)  # (N, |R|)
        b = a @ self.block.to(dt)  # (N, |C|)
        if q_c is not None:
            return b @ q_c.t().to(dt)
        return b.new_zeros(b.shape[0], self.d_in).index_copy_(1, self.cols, b)
