"""The MSE search's errors for wide cells (FP8's 128x128 blocks, a whole tensor), gathered from a table.

The direct search runs the peer's elementwise ops (divide, round to the grid, multiply,
subtract, power: about eight passes) over every element for every shrink factor. A
16-bit weight chunk holds few distinct values (about 4,000 in N(0, 0.02)), and cells
whose statistics are equal bit for bit share every candidate scale (a 2048 x 2048
weight's 256 blocks have about 50 distinct maxima). So every element's error under one
factor is an entry of a ``[groups, values]`` table computed with the peer's own ops
(the caller's ``pointwise``), and the elementwise errors are one gather per factor into
the peer's layout (each cell's elements contiguous, in ``flatten_for_calibration``
order). Each cell's sum is then torch's own ``sum(dim=-1)`` over the peer's numbers in
the peer's layout: the peer's rounding, with no certificate needed. (The pair tables'
float32 sums in :mod:`.mse_search` cannot be certified at 16,384 terms: the margin
would be half a bf16 step.)

Torch only; 16-bit weights (the values are found by a count over the 65,536 patterns).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

_HALF = (torch.bfloat16, torch.float16)
_GAIN = 2  # a table pays when it holds at most 1/_GAIN as many entries as the chunk has elements
_TABLE_ELEMS = 1 << 20  # (factors x groups x values) errors computed at once


class Buffers(Protocol):
    """:class:`.scales.Scratch`'s interface (this module sits beside it, below :mod:`.mse_search`)."""

    def get(self, key: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor: ...


# (values [1, 1, V], scales [k, groups, 1], zero points or None) -> errors [k, groups, V] in the weight's dtype
Pointwise = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass(frozen=True)
class GatheredCells:
    """A row chunk's cells as table entries: cell groups (equal statistics) x distinct values."""

    index: torch.Tensor  # [cells * width] int32: each element's entry, ``group * len(values) + value id``
    first: torch.Tensor  # [groups] int64: the lowest cell of each group (its candidates are the group's)
    values: torch.Tensor  # [V] the chunk's distinct values, in the weight's dtype
    cells: int
    width: int


def gathered_cells(cells: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor | None) -> GatheredCells | None:
    """The chunk's :class:`GatheredCells`, or ``None`` where a table would not pay.

    ``cells``: ``[cells, width]`` in the peer's order (zero padding included: it is summed
    too); ``lo`` / ``hi``: each cell's statistics, whose bits decide its candidates.
    """
    if cells.dtype not in _HALF:
        return None
    n, width = cells.shape
    key = _bits(lo) if hi is None else (_bits(lo) << 32) | _bits(hi)
    uniq, group = torch.unique(key, return_inverse=True)
    bits = cells.reshape(-1).view(torch.int16).to(torch.int32).bitwise_and_(0xFFFF)
    present = torch.bincount(bits, minlength=65536) > 0
    distinct = int(present.sum())
    if uniq.numel() * distinct * _GAIN > cells.numel():
        return None
    ids = torch.cumsum(present, 0, dtype=torch.int32).sub_(1)
    index = torch.index_select(ids, 0, bits).view(n, width).add_(group.to(torch.int32).mul_(distinct).view(n, 1))
    first = torch.full((uniq.numel(),), n, dtype=torch.int64).scatter_reduce_(0, group, torch.arange(n), "amin")
    values = torch.nonzero(present).view(-1).to(torch.int16).view(cells.dtype)
    return GatheredCells(index.view(-1), first, values, n, width)


def _bits(stat: torch.Tensor) -> torch.Tensor:
    """Each statistic's bit pattern as a non-negative int64 (16- or 32-bit floats)."""
    signed = {2: torch.int16, 4: torch.int32}[stat.element_size()]
    return stat.reshape(-1).view(signed).to(torch.int64).bitwise_and_((1 << 8 * stat.element_size()) - 1)


def gathered_errors(g: GatheredCells, scales: torch.Tensor, zps: torch.Tensor | None, pointwise: Pointwise,
                    scratch: Buffers) -> torch.Tensor:
    """``[factors, cells]``: each cell's summed error under each factor's qparams, as the direct path's.

    ``scales`` / ``zps``: ``[factors, *cells]``, the candidates' qparams. Per block of
    factors, ``pointwise`` gives the ``[factors, groups, values]`` table; per factor, one
    gather lays the elementwise errors out as the peer's ``[cells, width]`` (copied as
    int16: the same bytes) and torch sums each cell.
    """
    k, groups, v = scales.shape[0], g.first.numel(), g.values.numel()
    s = scales.reshape(k, -1).index_select(1, g.first).unsqueeze(-1)
    z = zps.reshape(k, -1).index_select(1, g.first).unsqueeze(-1) if zps is not None else None
    dtype, device = g.values.dtype, g.values.device
    out = torch.empty(k, g.cells, dtype=dtype, device=device)
    laid = scratch.get("gathered", (g.cells * g.width,), torch.int16, device)
    step = max(1, _TABLE_ELEMS // (groups * v))
    for a in range(0, k, step):
        table = pointwise(g.values.view(1, 1, v), s[a : a + step], z[a : a + step] if z is not None else None)
        for i in range(table.shape[0]):
            torch.index_select(table[i].reshape(-1).view(torch.int16), 0, g.index, out=laid)
            out[a + i] = laid.view(dtype).view(g.cells, g.width).sum(dim=-1)
    return out
