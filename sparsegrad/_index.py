"""Sorted sparse index sets: the union bookkeeping shared by the layer's delta and the optimizer state."""

from __future__ import annotations

import torch


def merge_sorted(
    index: torch.Tensor, new: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Union of sorted unique `index` (U,) with sorted unique `new` (k,).

    Returns (merged index, positions of `new` inside it, order) where `order` is None when nothing was added,
    else the permutation to apply to `torch.cat([old_array, fill])` to lay any per-entry array out like the
    merged index (see `relay`).
    """
    if index.numel():
        pos = torch.searchsorted(index, new)
        found = index[pos.clamp(max=index.numel() - 1)] == new
        if bool(found.all()):
            return index, pos, None
        missing = new[~found]
    else:
        missing = new
    merged = torch.cat([index, missing])
    order = torch.argsort(merged)
    merged = merged[order]
    return merged, torch.searchsorted(merged, new), order


def relay(array: torch.Tensor, order: torch.Tensor | None, fill: float = 0.0) -> torch.Tensor:
    """Lay a per-entry array out for a merged index (new entries get `fill`)."""
    if order is None:
        return array
    extra = order.numel() - array.numel()
    return torch.cat([array, array.new_full((extra,), fill)])[order]


def restrict(index: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For sorted `index` and sorted `keep`: (mask of kept entries, positions of `keep` or -1)."""
    if index.numel() == 0:
        return torch.zeros(0, dtype=torch.bool), torch.full_like(keep, -1)
    pos = torch.searchsorted(index, keep).clamp(max=index.numel() - 1)
    found = index[pos] == keep
    mask = torch.zeros(index.numel(), dtype=torch.bool)
    mask[pos[found]] = True
    return mask, torch.where(found, pos, torch.full_like(pos, -1))
