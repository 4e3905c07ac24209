"""Lossless encodings of one layer's ΔC on its group's local grid (format version 4, docs/delta-format.md).

A group's entries live on a grid of |R| rows x |C| columns: R and C are the sorted basis-column numbers its
layers reference. A layer's entries, local (row, col) on that grid in row-major order, are written as
- "csr": `row_ptr` (int32, |R|+1) and `col` (uint8 / int16 / int32, the narrowest that holds |C|), `values`;
- "bitmap": `bitmap` (uint8, |R|·|C| bits, most significant bit first, row-major), `values` of the set bits;
- "block": `block`, the whole (|R|, |C|) grid, zeros included.
Each decodes to the same (|R|, |C|) matrix, so every form merges to the same weights, bit for bit.
"""

from __future__ import annotations

import torch

from sparsegrad.memory import layer_encoding_bytes, local_index_bytes

_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
_INDEX_DTYPES = {1: torch.uint8, 2: torch.int16, 4: torch.int32}


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A flat bool mask as uint8 bytes, most significant bit first (numpy.packbits' order)."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    flat = torch.cat([flat, flat.new_zeros(pad)]).view(-1, 8)
    return (flat * _BITS).sum(1, dtype=torch.int32).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `pack_bits`: the first `n` bits as a bool tensor."""
    return ((packed.unsqueeze(1) & _BITS) != 0).reshape(-1)[:n]


def encode(
    local: torch.Tensor, values: torch.Tensor, n_rows: int, n_cols: int, form: str
) -> dict[str, torch.Tensor]:
    """Tensors (by suffix) of one layer in `form`; `local`: sorted flat local indices (row·|C| + col)."""
    if form == "csr":
        rows = local // n_cols
        counts = torch.bincount(rows, minlength=n_rows)
        row_ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(torch.int32)
        col = (local % n_cols).to(_INDEX_DTYPES[local_index_bytes(n_cols)])
        return {"row_ptr": row_ptr, "col": col, "values": values}
    if form == "bitmap":
        mask = torch.zeros(n_rows * n_cols, dtype=torch.bool)
        mask[local] = True
        return {"bitmap": pack_bits(mask), "values": values}
    if form == "block":
        block = values.new_zeros(n_rows * n_cols)
        block[local] = values
        return {"block": block.view(n_rows, n_cols)}
    raise ValueError(f"unknown layer encoding {form!r}")


def decode(parts: dict[str, torch.Tensor], n_rows: int, n_cols: int, form: str) -> torch.Tensor:
    """The layer's ΔC on the grid, float32 (|R|, |C|), from its tensors in `form`."""
    if form == "block":
        return parts["block"].float().reshape(n_rows, n_cols)
    small = torch.zeros(n_rows * n_cols)
    values = parts["values"].float()
    if form == "csr":
        counts = parts["row_ptr"].long().diff()
        rows = torch.repeat_interleave(torch.arange(n_rows), counts)
        small[rows * n_cols + parts["col"].long()] = values
    elif form == "bitmap":
        small[unpack_bits(parts["bitmap"], n_rows * n_cols)] = values
    else:
        raise ValueError(f"unknown layer encoding {form!r}")
    return small.view(n_rows, n_cols)


def smallest(nnz: int, n_rows: int, n_cols: int, value_bytes: int) -> str:
    """The form with the fewest bytes (ties: csr, then bitmap)."""
    sizes = layer_encoding_bytes(nnz, n_rows, n_cols, value_bytes)
    return min(sizes, key=lambda form: sizes[form])
