"""The pair tables' integer and summation helpers: 16-bit patterns counted, the runs of
statistics groups one ``embedding_bag`` sums, and the certificate's margin.

:mod:`ptq_core.numerics.mse_search` builds the tables and sums with these; they hold
no scheme arithmetic, so they sit below it. Torch only.
"""

from __future__ import annotations

import torch

_TABLE_MAX_WIDTH = 4096  # widest cell (a channel) for tables: the certificate's margin grows with it


def _patterns(bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct 16-bit patterns among ``bits`` (int32 in [0, 65536)), ascending, and
    the map from a pattern to its rank among them (int32, 65536 entries): counted, not sorted."""
    present = torch.bincount(bits, minlength=65536) > 0
    return torch.nonzero(present).view(-1), torch.cumsum(present, 0, dtype=torch.int32).sub_(1)


def _bits16(t: torch.Tensor) -> torch.Tensor:
    """A 16-bit float tensor's bit patterns, flattened, as non-negative int64."""
    return t.reshape(-1).view(torch.int16).to(torch.int64).bitwise_and_(0xFFFF)


def _qparams_key(scales: torch.Tensor, zps: torch.Tensor | None) -> torch.Tensor:
    """One int64 per (scale, zero point): equal exactly when both are equal bit for bit."""
    key = scales.reshape(-1).to(torch.float32).view(torch.int32).to(torch.int64).bitwise_and_(0xFFFFFFFF)
    if zps is None:
        return key
    return (key << 8) | zps.reshape(-1).view(torch.uint8).to(torch.int64)


_RUN_SLACK = 8  # columns a run of groups may sum beyond its widest group's span, to save a call


def _runs(which: torch.Tensor):
    """Runs of consecutive groups ``(g0, g1, c0, c1)`` summed by one ``embedding_bag`` over columns ``[c0, c1)``.

    Groups are sorted by statistic, so neighbours' candidates share or neighbour columns;
    a run grows while its columns stay within ``_RUN_SLACK`` of its widest group's."""
    firsts, lasts = which.amin(dim=0).tolist(), which.amax(dim=0).tolist()
    g0, c0, c1, widest = 0, firsts[0], lasts[0] + 1, 0
    for g, (first, last) in enumerate(zip(firsts, lasts)):
        lo, hi, w = min(c0, first), max(c1, last + 1), max(widest, last + 1 - first)
        if g > g0 and hi - lo > w + _RUN_SLACK:
            yield g0, g, c0, c1
            g0, lo, hi, w = g, first, last + 1, last + 1 - first
        c0, c1, widest = lo, hi, w
    yield g0, len(firsts), c0, c1


_U = 2.0**-24  # float32's unit roundoff
_F32_MAX = torch.finfo(torch.float32).max


def _gamma(n: int) -> float:
    """Higham's ``gamma(n) = n u / (1 - n u)``: the relative error bound of ``n`` float32 roundings."""
    if n * _U >= 1:
        raise AssertionError(f"gamma({n}) is undefined in float32")
    return n * _U / (1 - n * _U)


def _sum_margin(width: int) -> float:
    """Relative half-width of the interval that holds torch's float32 sum of ``width``
    non-negative numbers, given any other float32 sum ``a`` of them.

    Any summation order (recursive, pairwise, torch's cascade) lies within
    ``gamma(width - 1)`` of the exact sum ``S``, so torch's sum lies in
    ``[a (1 - 2 (width - 1) u), a (1 + gamma(2 (width - 1)))]``; ``gamma(2 width)``
    bounds both sides. ``4 u`` more covers rounding ``1 -+ margin`` to float32 and the
    product that applies it (each at most ``u``), so the computed ends still enclose the
    interval. ``tests/core/test_observers.py`` checks this in exact arithmetic.
    """
    if width > _TABLE_MAX_WIDTH:
        raise AssertionError(f"cells of {width} elements are wider than the certified {_TABLE_MAX_WIDTH}")
    return _gamma(2 * width) + 4 * _U


# the widest table cell must leave a margin under half a bf16 step (2**-9 relative), or
# every sum would be recomputed and the tables would cost more than they save
assert _sum_margin(_TABLE_MAX_WIDTH) < 2.0**-9, "raise _TABLE_MAX_WIDTH only with a margin that still certifies"
