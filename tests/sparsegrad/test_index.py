"""Sorted-union bookkeeping used by the optimizer state."""

from __future__ import annotations

import torch

from sparsegrad._index import merge_sorted, relay, restrict


def test_merge_sorted_and_relay_match_a_full_sort() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        a = torch.randperm(500, generator=g)[: int(torch.randint(0, 120, (1,), generator=g))].sort().values
        b = torch.randperm(500, generator=g)[: int(torch.randint(1, 120, (1,), generator=g))].sort().values
        vals = torch.randn(a.numel(), generator=g)
        merged, pos, layout = merge_sorted(a, b)
        assert torch.equal(merged, torch.unique(torch.cat([a, b])))
        assert torch.equal(merged[pos], b)
        laid = relay(vals, layout)
        assert torch.equal(laid[torch.searchsorted(merged, a)], vals)
        assert int((laid != 0).sum()) <= a.numel()


def test_restrict_keeps_only_requested_entries() -> None:
    index = torch.tensor([1, 4, 7, 9])
    mask, where = restrict(index, torch.tensor([0, 4, 9, 12]))
    assert mask.tolist() == [False, True, False, True]
    assert where.tolist() == [-1, 1, 3, -1]
