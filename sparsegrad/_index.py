"""Sorted sparse index sets: the union bookkeeping shared by the layer's delta and the optimizer state."""

from __future__ import annotations

import torch


def merge_sorted(
    index: torch.Tensor, new: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Union of sorted unique `index` (U,) with sorted unique `new` (k,), without re-sorting.

    Returns (merged index, positions of `new` in it, layout); `layout` is None when nothing was added,
    else (where the old entries go, where the added ones go) in the merged arrays (see `relay`).
    """
    if index.numel():
        pos = torch.searchsorted(index, new)
        found = index[pos.clamp(max=index.numel() - 1)] == new
        if bool(found.all()):
            return index, pos, None
        missing = new[~found]
    else:
        missing = new
    # both sorted: an element's merged position = its own rank + how many of the other array precede it
    at_old = torch.arange(index.numel(), device=index.device) + torch.searchsorted(missing, index)
    at_new = torch.arange(missing.numel(), device=index.device) + torch.searchsorted(index, missing)
    merged = index.new_empty(index.numel() + missing.numel())
    merged[at_old] = index
    merged[at_new] = missing
    return merged, torch.searchsorted(merged, new), (at_old, at_new)


def relay(
    array: torch.Tensor, layout: tuple[torch.Tensor, torch.Tensor] | None, fill: float = 0.0
) -> torch.Tensor:
    """Lay a per-entry array out like a merged index (added entries get `fill`)."""
    if layout is None:
        return array
    at_old, at_new = layout
    out = array.new_empty(at_old.numel() + at_new.numel())
    out[at_old] = array
    out[at_new] = fill
    return out


def restrict(index: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For sorted `index` and sorted `keep`: (mask of kept entries, positions of `keep` or -1)."""
    if index.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=index.device), torch.full_like(keep, -1)
    pos = torch.searchsorted(index, keep).clamp(max=index.numel() - 1)
    found = index[pos] == keep
    mask = torch.zeros(index.numel(), dtype=torch.bool, device=index.device)
    mask[pos[found]] = True
    return mask, torch.where(found, pos, torch.full_like(pos, -1))
