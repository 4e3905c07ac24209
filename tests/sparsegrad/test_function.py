"""The custom autograd function: float64 gradcheck, forward equality, and the sparse update algebra."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparsegrad.function import (
    SparseGradFunction,
    Support,
    apply_sparse_update,
    apply_support_update,
    coefficient_grad,
    values_at,
)


def _orth(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q


@pytest.mark.parametrize("identity", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_gradcheck_float64(identity: bool, padded: bool) -> None:
    torch.manual_seed(0)
    d_out, d_in = 6, 4
    x = torch.randn(2, 5, d_in, dtype=torch.float64, requires_grad=True)
    coef = (0.1 * torch.randn(d_out, d_in, dtype=torch.float64)).requires_grad_()
    w = torch.randn(d_out, d_in, dtype=torch.float64)
    b = torch.randn(d_out, dtype=torch.float64, requires_grad=True)
    p, q = (None, None) if identity else (_orth(d_out, 1), _orth(d_in, 2))
    mask = torch.ones(2, 5, 1, dtype=torch.float64)
    if padded:
        mask[0, 3:] = 0  # zero rows of dY: the padding fast path must stay exact
        mask[1, 1:] = 0

    def f(x: torch.Tensor, coef: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return SparseGradFunction.apply(x, coef, w, b, p, q, False) * mask

    assert torch.autograd.gradcheck(f, (x, coef, b), eps=1e-6, atol=1e-8)


def test_coefficient_grad_is_rotated_weight_grad() -> None:
    """dL/dC equals Pᵀ (dL/dW) Q (not the reference code's Pᵀ G Qᵀ), in both multiplication orders."""
    torch.manual_seed(0)
    p, q = _orth(7, 3), _orth(5, 4)
    for n in (2, 200):  # small n: factor-first order; large n: dense-first order
        gy, x = torch.randn(n, 7, dtype=torch.float64), torch.randn(n, 5, dtype=torch.float64)
        expect = p.t() @ (gy.t() @ x) @ q
        torch.testing.assert_close(coefficient_grad(gy, x, p, q), expect)
        assert not torch.allclose(expect, p.t() @ (gy.t() @ x) @ q.t())


def test_forward_with_zero_coef_is_plain_linear() -> None:
    torch.manual_seed(0)
    x, w, b = torch.randn(3, 4, 8), torch.randn(16, 8), torch.randn(16)
    coef = torch.zeros(1).expand(16, 8).requires_grad_()
    p, q = _orth(16, 1).float(), _orth(8, 2).float()
    y = SparseGradFunction.apply(x, coef, w, b, p, q, True)
    torch.testing.assert_close(y, F.linear(x, w, b))
    y.sum().backward()
    assert coef.grad is not None and coef.grad.shape == (16, 8)


@pytest.mark.parametrize("shape", [(12, 5), (5, 12)])
@pytest.mark.parametrize("which", ["both", "p", "q", "none"])
def test_apply_sparse_update_matches_dense(shape: tuple[int, int], which: str) -> None:
    d_out, d_in = shape
    p = _orth(d_out, 1) if which in ("both", "p") else None
    q = _orth(d_in, 2) if which in ("both", "q") else None
    g = torch.Generator().manual_seed(5)
    flat = torch.randperm(d_out * d_in, generator=g)[:9].sort().values
    rows, cols = flat // d_in, flat % d_in
    vals = torch.randn(9, generator=g, dtype=torch.float64)
    s = torch.zeros(d_out, d_in, dtype=torch.float64)
    s[rows, cols] = vals
    expect = (p if p is not None else torch.eye(d_out, dtype=torch.float64)) @ s
    expect = expect @ (q if q is not None else torch.eye(d_in, dtype=torch.float64)).t()
    w = torch.zeros(d_out, d_in, dtype=torch.float64)
    apply_sparse_update(w, rows, cols, vals, p, q)
    torch.testing.assert_close(w, expect)
    wt = torch.zeros(d_in, d_out, dtype=torch.float64)  # Conv1D layout: update through the transposed view
    apply_sparse_update(wt.t(), rows, cols, vals, p, q)
    torch.testing.assert_close(wt.t(), expect)
    # a fixed support's update goes through its own basis columns only, with the same result
    ws = torch.zeros(d_out, d_in, dtype=torch.float64)
    apply_support_update(ws, Support.of(flat, d_in), vals, p, q)
    torch.testing.assert_close(ws, expect)


def test_values_at_reads_dense_and_sparse_gradients() -> None:
    dense = torch.arange(12, dtype=torch.float32).view(3, 4)
    index = torch.tensor([0, 5, 11])
    torch.testing.assert_close(values_at(dense, index), torch.tensor([0.0, 5.0, 11.0]))
    ij = torch.tensor([[0, 1, 2], [1, 1, 3]])  # flat 1, 5, 11
    part = torch.sparse_coo_tensor(ij, torch.tensor([1.0, 2.0, 3.0]), (3, 4))
    summed = part + part  # accumulated micro-batches: uncoalesced until read
    torch.testing.assert_close(values_at(summed, torch.tensor([1, 5, 11])), torch.tensor([2.0, 4.0, 6.0]))
    torch.testing.assert_close(values_at(summed, index), torch.tensor([0.0, 4.0, 6.0]))  # not all stored
