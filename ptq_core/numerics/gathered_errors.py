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

from .spec import WeightSpec

_HALF = (torch.bfloat16, torch.float16)
# a table pays when (groups x values) is at most 1/_GAIN of the chunk's elements: on 2048 x 2048
# weights memoryless_mse broke even near 1/2 (0.95x at 0.56, 1.6x at 0.32), nvfp4_expanded_mse near 1
_GAIN = 3
_TABLE_ELEMS = 1 << 22  # (distinct qparams x values) errors computed at once


class Buffers(Protocol):
    """:class:`.scales.Scratch`'s interface (this module sits beside it, below :mod:`.mse_search`)."""

    def get(self, key: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor: ...


# (values [1, V], scales [U, 1], zero points [U, 1] or None) -> errors [U, V] in the weight's dtype
Pointwise = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass(frozen=True)
class GatheredCells:
    """A row chunk's cells as table entries: cell groups (equal statistics) x distinct values."""

    ids: torch.Tensor  # [cells, width] int16: each element's value id (read as unsigned), cells in the peer's order
    offset: torch.Tensor  # [cells, 1] int32: the first entry of the cell's group's table row, ``group * len(values)``
    first: torch.Tensor  # [groups] int64: the lowest cell of each group (its candidates are the group's)
    values: torch.Tensor  # [V] the chunk's distinct values, in the weight's dtype


def may_gather(weight: torch.Tensor, spec: WeightSpec) -> bool:
    """Whether the search may gather its errors: 16-bit cells too wide for pair tables (blocks, whole tensors)."""
    return weight.dtype in _HALF and spec.strategy in ("block", "tensor")


def gathered_cells(cells: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor | None, scratch: Buffers) -> GatheredCells | None:
    """The chunk's :class:`GatheredCells`, or ``None`` where a table would not pay.

    ``cells``: ``[cells, width]`` in the peer's order (zero padding included: it is summed
    too); ``lo`` / ``hi``: each cell's statistics, whose bits decide its candidates. The
    ids take 16 bits an element (the chunk's own size) for as long as the search runs.
    """
    if cells.dtype not in _HALF:
        return None
    n, width = cells.shape
    key = _bits(lo) if hi is None else (_bits(lo) << 32) | _bits(hi)
    uniq, group = torch.unique(key, return_inverse=True)
    bits = scratch.get("gathered_index", (n * width,), torch.int32, cells.device).copy_(cells.reshape(-1).view(torch.uint16))
    present = torch.bincount(bits, minlength=65536) > 0
    distinct = int(present.sum())
    if uniq.numel() * distinct * _GAIN > cells.numel():
        return None
    ids = torch.cumsum(present, 0, dtype=torch.int32).sub_(1).to(torch.int16)  # 65,536 ids at most: they wrap to negative
    first = _lowest(group, uniq.numel())
    values = torch.nonzero(present).view(-1).to(torch.int16).view(cells.dtype)
    offset = group.to(torch.int32).mul_(distinct).view(n, 1)
    return GatheredCells(torch.index_select(ids, 0, bits).view(n, width), offset, first, values)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """Each element's bit pattern as a non-negative int64 (8, 16 or 32 bits: equal exactly when the bits are)."""
    signed = {1: torch.int8, 2: torch.int16, 4: torch.int32}[t.element_size()]
    return t.reshape(-1).view(signed).to(torch.int64).bitwise_and_((1 << 8 * t.element_size()) - 1)


def _lowest(group: torch.Tensor, groups: int) -> torch.Tensor:
    """``[groups]``: the lowest position holding each group id (every id in ``range(groups)`` occurs)."""
    n = group.numel()
    return torch.full((groups,), n, dtype=torch.int64).scatter_reduce_(0, group, torch.arange(n), "amin")


def gathered_errors(g: GatheredCells, scales: torch.Tensor, zps: torch.Tensor | None, pointwise: Pointwise,
                    scratch: Buffers) -> torch.Tensor:
    """``[factors, cells]``: each cell's summed error under each factor's qparams, as the direct path's.

    ``scales`` / ``zps``: ``[factors, *cells]``, the candidates' qparams. Candidates
    repeat across groups and factors (a 16-bit statistic times a factor has few
    values), so ``pointwise`` runs once per distinct (scale, zero point) and value. Per
    factor, its groups' rows are copied out as a ``[groups, values]`` table and one
    gather lays the elementwise errors out as the peer's ``[cells, width]`` (copied as
    int16: the same bytes), which torch sums cell by cell.
    """
    k, groups, v = scales.shape[0], g.first.numel(), g.values.numel()
    s = scales.reshape(k, -1).index_select(1, g.first).reshape(-1)  # [factors * groups]
    z = zps.reshape(k, -1).index_select(1, g.first).reshape(-1) if zps is not None else None
    uniq, which = torch.unique(_bits(s) if z is None else (_bits(s) << 32) | _bits(z), return_inverse=True)
    if k > 1 and uniq.numel() * v > _TABLE_ELEMS:  # bound the table: fewer factors at once
        half = k // 2
        return torch.cat([gathered_errors(g, scales[:half], zps[:half] if zps is not None else None, pointwise, scratch),
                          gathered_errors(g, scales[half:], zps[half:] if zps is not None else None, pointwise, scratch)])
    first = _lowest(which, uniq.numel())
    table = pointwise(g.values.view(1, v), s[first].view(-1, 1), z[first].view(-1, 1) if z is not None else None)
    (n, width), dtype, device = g.ids.shape, g.values.dtype, g.values.device
    index = scratch.get("gathered_index", (n, width), torch.int32, device)
    index.copy_(g.ids.view(torch.uint16)).add_(g.offset)
    rows = scratch.get("gathered_rows", (groups, v), dtype, device)
    laid = scratch.get("gathered", (n, width), dtype, device)
    out = torch.empty(k, n, dtype=dtype, device=device)
    for f in range(k):
        torch.index_select(table, 0, which[f * groups : (f + 1) * groups], out=rows)
        torch.index_select(rows.view(-1).view(torch.int16), 0, index.view(-1), out=laid.view(-1).view(torch.int16))
        out[f] = laid.sum(dim=-1)
    return out
