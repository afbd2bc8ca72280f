"""The MSE observers' grid search, byte-identical to the peer's eager ``_grid_search_mse``.

The peer evaluates one shrink factor at a time: it fake-quantizes the whole weight
with every cell's shrunk range, sums ``|q - w| ** norm`` per cell in the weight's
dtype, keeps strict improvements, and stops after ``patience`` factors that improve
no cell anywhere (:mod:`ptq_core.observers` holds that bookkeeping). Three ways to get
its errors here, all equal to the peer's bit for bit:

* direct (:func:`_errors`): the peer's ops for many factors at once, in row blocks
  that stay in cache;
* pair tables (:func:`_table_errors`, 16-bit weights): cells with the same statistics
  share their candidates and a chunk holds few distinct values, so the elementwise
  errors are computed once per (distinct qparams, distinct value); each cell's sum is
  a float32 sum of table entries whose rounding to the weight's dtype is certified
  against any float32 summation order (torch's included), and re-summed with torch's
  own reduction where it is not;
* gathered (:mod:`.gathered_errors`, 16-bit blocks or whole tensors, too wide to
  certify): the same per (distinct qparams, distinct value) errors, laid out per factor
  by one gather and summed by torch's own reduction.

The search runs on the CPU: its choices hang on the CPU's summation order. Torch only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial

import torch

from .. import observers
from ..errors import NonFiniteScaleError
from . import scales as _scales
from .gathered_errors import GatheredCells, gathered_cells, gathered_errors, may_gather
from .scales import _FLOAT_CODES, _FP6_MAGNITUDES, Scratch, WeightStats, _finite, _padded, _qparams, _row_chunks, _stats
from .spec import _FP8, WeightSpec

_SEARCH_ELEMS = 1 << 20  # elements of one (candidates x cells x group) error evaluation


_SEARCH_CELLS = 1 << 22  # (candidate, cell) errors held at once across the whole weight


@dataclass
class _SearchChunk:
    """One row chunk's search state: expanded statistics and the running best per cell."""

    first: int
    end: int
    lo: torch.Tensor
    hi: torch.Tensor | None
    best_err: torch.Tensor
    best_step: torch.Tensor
    table: _PairTable | None = None
    gathered: GatheredCells | None = None


def _mse_stats(weight: torch.Tensor, spec: WeightSpec, scratch: Scratch) -> WeightStats:
    """The peer's ``_grid_search_mse`` over every scale cell of the weight.

    The peer evaluates one shrink factor at a time over the whole weight and stops
    once ``patience`` consecutive factors improve no cell anywhere. Here factors are
    evaluated in blocks over every row chunk and :func:`observers.advance` replays the
    peer's stop, so the choices are the peer's. The direct path never evaluates a
    factor the peer skips (a block is never longer than the factors that could still
    pass before it stops); pair tables cost little per factor and take all at once.
    """
    params = observers.mse_params(spec.observer_kwargs)
    # NVFP4's search takes scales unrounded and without the global scale (the peer drops scale_dtype)
    search = replace(spec, scale_dtype=None) if spec.strategy == "tensor_group" else spec
    steps = len(params.shrink)
    shrink = observers.shrink_tensor(params, weight.dtype, weight.device)
    chunks = _search_chunks(weight, spec, search, params, scratch)
    cells = sum(c.lo.numel() for c in chunks)
    patience = steps if all(c.table is not None for c in chunks) else params.patience
    step, stale = 0, 0
    while step < steps:
        size = min(steps - step, max(1, patience - stale), max(1, _SEARCH_CELLS // cells))
        factors = shrink[step : step + size]
        results = []
        improved_any = torch.zeros(size, dtype=torch.bool, device=weight.device)
        for c in chunks:
            if c.table is not None:  # [factors, cells] with the cells in the table's order
                err = _table_errors(c.table, search, params.norm, factors, scratch)
            else:
                err = _errors(weight[c.first : c.end], c.lo, c.hi, search, params.norm, factors, scratch, c.gathered)
            found = observers.improvements(err, c.best_err)
            improved_any |= found.improved.flatten(1).any(dim=1)
            results.append(found)
        taken, stale, stopped = observers.advance(improved_any, stale, params.patience)
        for c, found in zip(chunks, results):
            c.best_err, c.best_step = observers.keep_best(found, taken, step, c.best_err, c.best_step)
        step += taken
        if stopped:
            break
    picked = [_picked(c, shrink if steps else None) for c in chunks]
    if spec.strategy == "tensor":
        return WeightStats(*picked[0])
    return WeightStats(torch.cat([lo for lo, _ in picked]), torch.cat([hi for _, hi in picked]) if picked[0][1] is not None else None)


def _search_chunks(weight: torch.Tensor, spec: WeightSpec, search: WeightSpec, params, scratch: Scratch) -> list[_SearchChunk]:
    """The weight's row chunks with their expanded statistics and starting state.

    The table and gathered paths want big chunks (more repeated values), the direct
    one cache-sized ones. A chunk with a table keeps its running best in the table's cell order.
    """
    rows, cols = weight.shape
    if spec.strategy == "tensor":  # one cell: the peer's single whole-tensor sum, one factor at a time
        spans = [(0, rows)]
    else:
        multiple = spec.block[0] if spec.strategy == "block" else 1
        elems = _scales._CHUNK_ELEMS if _tables_apply(weight, spec) or may_gather(weight, spec) else _scales._CHUNK_ELEMS // 16
        spans = _row_chunks(rows, cols, multiple, elems)
    chunks = []
    for a, b in spans:
        lo, hi = _finite(*_stats(weight[a:b], spec, scratch))
        lo, hi = _expanded(lo, params.expand), (_expanded(hi, params.expand) if hi is not None else None)
        table = _pair_table(weight[a:b], lo, hi, search, scratch) if params.shrink else None
        wide = params.shrink and may_gather(weight, spec)
        gathered = gathered_cells(_search_cells(weight[a:b], spec, scratch), lo, hi, scratch) if wide else None
        best_err, best_step = observers.initial_best(lo if table is None else lo.reshape(-1))
        chunks.append(_SearchChunk(a, b, lo, hi, best_err, best_step, table, gathered))
    return chunks


def _picked(c: _SearchChunk, shrink: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The chunk's statistics shrunk by each cell's chosen factor (``shrink`` is None: no search)."""
    if shrink is None:
        return c.lo, c.hi
    step = c.best_step
    if c.table is not None:  # back from the table's cell order
        step = torch.empty_like(step).index_copy_(0, c.table.order, step).view(c.lo.shape)
    factor = shrink[step]
    lo = (c.lo.to(factor.dtype) * factor).to(c.lo.dtype)
    hi = (c.hi.to(factor.dtype) * factor).to(c.hi.dtype) if c.hi is not None else None
    return lo, hi


def _expanded(stat: torch.Tensor, expand: float) -> torch.Tensor:
    out = observers.expanded(stat, expand)
    if not bool(torch.isfinite(out).all()):
        raise NonFiniteScaleError(
            f"its max |w| = {float(stat.abs().amax()):.4g} times the observer's expand={expand} overflows "
            f"{str(stat.dtype).removeprefix('torch.')}; use a smaller expand or add its module to ignore."
        )
    return out


def _errors(x, lo, hi, spec: WeightSpec, norm: float, factors: torch.Tensor, scratch: Scratch,
            gathered: GatheredCells | None = None) -> torch.Tensor:
    """``[factors, *cells]``: each shrunk range's error, as the peer's ``_calculate_error``.

    Candidate statistics and scales are computed for the whole row chunk; the
    errors gathered from a table (``gathered``: :mod:`.gathered_errors`), else on row
    blocks small enough that a block of candidates stays in cache.
    """
    rows, cols = x.shape
    k = factors.shape[0]
    cand_lo = observers.candidates(lo, factors)
    cand_hi = observers.candidates(hi, factors) if hi is not None else None
    scales, zps = _qparams(cand_lo, cand_hi, spec, None)
    if gathered is not None:
        pointwise = partial(_pointwise_errors, spec=spec, norm=norm, scratch=scratch)
        return gathered_errors(gathered, scales, zps, pointwise, scratch).view(k, *lo.shape)
    if spec.strategy == "tensor":  # the peer sums the whole tensor at once: keep that reduction
        return torch.cat([_mse_errors(x, scales[i : i + 1], zps[i : i + 1] if zps is not None else None, spec, norm, scratch) for i in range(k)])
    multiple = spec.block[0] if spec.strategy == "block" else 1
    cols_p = cols + (-cols) % spec.block[1] if spec.strategy == "block" else cols
    pieces = []
    for a, b in _row_chunks(rows, cols_p, multiple, max(1, _SEARCH_ELEMS // k)):
        c0, c1 = a // multiple, math.ceil(b / multiple)  # cell rows (block strategy: block rows)
        zp_rows = zps[:, c0:c1] if zps is not None else None
        pieces.append(_mse_errors(x[a:b], scales[:, c0:c1], zp_rows, spec, norm, scratch))
    return torch.cat(pieces, dim=1)


def _search_cells(x: torch.Tensor, spec: WeightSpec, scratch: Scratch) -> torch.Tensor:
    """The chunk as ``[cells, elements]`` in the peer's ``flatten_for_calibration`` order."""
    if spec.strategy == "block":
        blocks = _padded(x, *spec.block, scratch)
        nbr, bh, nbc, bw = blocks.shape
        flat = scratch.get("mse_blocks", (nbr, nbc, bh, bw), x.dtype, x.device)
        flat.copy_(blocks.permute(0, 2, 1, 3))
        return flat.view(nbr * nbc, bh * bw)
    if spec.strategy in ("group", "tensor_group"):
        return x.reshape(-1, spec.group_size)
    if spec.strategy == "channel":
        return x
    return x.reshape(1, -1)


def _mse_errors(x, scales, zps, spec: WeightSpec, norm: float, scratch: Scratch) -> torch.Tensor:
    """``sum |fake_quantize(w) - w| ** norm`` per candidate and cell: ``[candidates, *cells]``.

    The peer's ``_calculate_error``: :func:`_pointwise_errors`, then a sum over each
    cell's contiguous elements in the weight's dtype (torch's own reduction, so the
    same rounding as the peer's).

    Cells of fewer than 64 elements (NVFP4's 16, MX's 32) are worked on
    cell-minor (``[candidates, element, cell]``): torch broadcasts a per-cell scale
    over such a short inner dimension several times slower. The elementwise results
    do not depend on the layout; the sum runs on the peer's cell-major layout.
    """
    cells = _search_cells(x, spec, scratch)
    n, width = cells.shape
    k = scales.shape[0]
    if width < 64:
        src = scratch.get("mse_xt", (width, n), x.dtype, x.device).copy_(cells.t())
        s = scales.reshape(k, 1, n)
        z = zps.reshape(k, 1, n) if zps is not None else None
        out = _pointwise_errors(src.unsqueeze(0), s, z, spec, norm, scratch, lambda t: t.permute(0, 2, 1))
    else:
        s = scales.reshape(k, n, 1)
        z = zps.reshape(k, n, 1) if zps is not None else None
        out = _pointwise_errors(cells.unsqueeze(0), s, z, spec, norm, scratch)
    return out.sum(dim=-1).view(k, *scales.shape[1:])


def _pointwise_errors(src, s, z, spec: WeightSpec, norm: float, scratch: Scratch, arrange=None) -> torch.Tensor:
    """``|fake_quantize(src) - src| ** norm`` elementwise, as the peer computes each element.

    ``x / scale``, ``+ zp``, clamp and round to the grid, ``- zp``, ``* scale``, the
    difference, ``abs().pow(norm)``, all in ``src``'s dtype (``s`` and ``z`` broadcast
    against ``src``). For 16-bit weights the grid rounding and the power are table
    lookups over every bit pattern, built with the same torch ops. ``arrange`` maps
    the broadcast result to the layout returned (a permuted view); the result lives
    in ``scratch`` until the next call.
    """
    dtype = src.dtype
    shape = torch.broadcast_shapes(src.shape, s.shape)
    t = scratch.get("mse_t", tuple(shape), dtype, src.device)
    torch.div(src, s, out=t)
    z = z.to(dtype) if z is not None else None
    if z is not None:
        t += z
    _round_to_grid(t, spec, scratch)
    if z is not None:
        t -= z
    t *= s
    t -= src
    arranged = arrange(t) if arrange is not None else t
    out = scratch.get("mse_pow", tuple(arranged.shape), dtype, src.device)
    if dtype in _HALF_BITS:
        idx = scratch.get("mse_idx", tuple(arranged.shape), torch.int32, src.device)
        idx.copy_(arranged.view(torch.uint16) if arrange is None else arrange(t.view(torch.uint16)))
        torch.index_select(_pow_lut(dtype, norm, src.device), 0, idx.view(-1), out=out.view(-1))
    else:
        t.abs_().pow_(norm)
        out.copy_(arranged)
    return out


# --------------------------------------------------------------------------- pair tables
_TABLE_MAX_WIDTH = 4096  # widest cell (a channel) for tables: the certificate's margin grows with it


@dataclass(frozen=True)
class _PairTable:
    """A row chunk's cells grouped by statistics, as ids of the chunk's distinct values.

    Cells with the same statistics (bit for bit) get the same candidate scales, and a
    chunk holds few distinct values, so every element's error is one of
    ``distinct qparams x distinct values`` numbers: :func:`_table_errors` computes those
    once with the peer's elementwise ops and sums each cell's entries.
    """

    cells: torch.Tensor  # [cells, width], the chunk in the peer's order
    group: torch.Tensor  # [cells] int64: the cell's statistics group
    order: torch.Tensor  # [cells] int64: the cells sorted by group
    ids: torch.Tensor  # [cells, width] int32: value ids, cells in ``order``
    bounds: tuple[int, ...]  # group g's cells are ``order[bounds[g]:bounds[g + 1]]``
    lo: torch.Tensor  # [groups] each group's (expanded) statistic
    hi: torch.Tensor | None
    values: torch.Tensor  # [distinct values] in the weight's dtype


def _tables_apply(weight: torch.Tensor, spec: WeightSpec) -> bool:
    """Whether the search may use pair tables: 16-bit errors (whose float32 sums the table
    path certifies) and cells of at most ``_TABLE_MAX_WIDTH`` elements."""
    if weight.dtype not in _HALF_BITS or spec.strategy in ("tensor", "block"):
        return False
    width = weight.shape[1] if spec.strategy == "channel" else spec.group_size
    return width <= _TABLE_MAX_WIDTH


def _pair_table(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor | None, spec: WeightSpec, scratch: Scratch):
    """The chunk's :class:`_PairTable`, or ``None`` where the table would not pay."""
    if not _tables_apply(x, spec):
        return None
    cells = _search_cells(x, spec, scratch)
    n, width = cells.shape
    stat = _bits16(lo)
    if hi is not None:
        stat = (stat << 16) | _bits16(hi)
    uniq, group = torch.unique(stat, return_inverse=True)
    groups = uniq.numel()
    order = torch.argsort(group, stable=True)
    sorted_cells = cells.index_select(0, order)
    bits = sorted_cells.reshape(-1).view(torch.int16).to(torch.int32).bitwise_and_(0xFFFF)
    present = torch.bincount(bits, minlength=65536) > 0
    distinct = int(present.sum())
    if distinct * groups > cells.numel() // _TABLE_GAIN:
        return None
    ids = torch.index_select(torch.cumsum(present, 0, dtype=torch.int32).sub_(1), 0, bits).view(n, width)
    values = torch.nonzero(present).view(-1).to(torch.int16).view(x.dtype)
    bounds = (0, *torch.cumsum(torch.bincount(group, minlength=groups), 0).tolist())
    lo_g, hi_g = (uniq >> 16, uniq & 0xFFFF) if hi is not None else (uniq, None)
    as_dtype = lambda b: b.to(torch.int16).view(x.dtype) if b is not None else None  # noqa: E731
    return _PairTable(cells, group, order, ids, bounds, as_dtype(lo_g), as_dtype(hi_g), values)


_TABLE_GAIN = 1  # the table path needs at least this many elements per table row
_TABLE_ENTRIES = 1 << 22  # (distinct qparams x distinct values) errors held at once (~50 MB of buffers)


def _bits16(t: torch.Tensor) -> torch.Tensor:
    """A 16-bit float tensor's bit patterns, flattened, as non-negative int64."""
    return t.reshape(-1).view(torch.int16).to(torch.int64).bitwise_and_(0xFFFF)


def _qparams_key(scales: torch.Tensor, zps: torch.Tensor | None) -> torch.Tensor:
    """One int64 per (scale, zero point): equal exactly when both are equal bit for bit."""
    key = scales.reshape(-1).to(torch.float32).view(torch.int32).to(torch.int64).bitwise_and_(0xFFFFFFFF)
    if zps is None:
        return key
    return (key << 8) | zps.reshape(-1).view(torch.uint8).to(torch.int64)


def _table_errors(table: _PairTable, spec: WeightSpec, norm: float, factors: torch.Tensor, scratch: Scratch) -> torch.Tensor:
    """``[factors, cells]`` errors (cells in ``table.order``), equal to :func:`_mse_errors`' without a pass per element.

    1. Each distinct (scale, zero point) among the groups' candidates is applied to each
       distinct value with :func:`_pointwise_errors`: the peer's elementwise numbers.
    2. Each cell's sum runs over its elements' table rows in float32 (``embedding_bag``),
       in another order than torch's reduction. Both float32 sums of the same
       non-negative numbers lie within ``gamma(width - 1)`` (relative) of the exact sum
       (:func:`_sum_margin`), so where that whole interval rounds to one value of the weight's dtype, that
       value is the peer's. The rest (under 1% on the benchmark's weights, and any non-finite sum) are summed
       again on the peer's layout with torch's reduction.
    """
    k, groups = factors.shape[0], table.lo.numel()
    cand_hi = observers.candidates(table.hi, factors) if table.hi is not None else None
    scales, zps = _qparams(observers.candidates(table.lo, factors), cand_hi, spec, None)  # [k, groups]
    uniq, which = torch.unique(_qparams_key(scales, zps), return_inverse=True)
    if k > 1 and uniq.numel() * table.values.numel() > _TABLE_ENTRIES:  # bound the table: fewer factors at once
        half = k // 2
        return torch.cat([_table_errors(table, spec, norm, factors[:half], scratch),
                          _table_errors(table, spec, norm, factors[half:], scratch)])
    first = torch.zeros(uniq.numel(), dtype=torch.int64).scatter_(0, which, torch.arange(which.numel()))
    s = scales.reshape(-1)[first].view(-1, 1)
    z = zps.reshape(-1)[first].view(-1, 1) if zps is not None else None
    # [values, qparams]: the elementwise errors of every distinct value under every distinct qparams
    per_value = _pointwise_errors(table.values.view(-1, 1), s.view(1, -1), z.view(1, -1) if z is not None else None,
                                  spec, norm, scratch).float()
    which = which.view(k, groups)
    sums = []
    # group g's qparams ids lie in [first, last] (ids sort by scale): a column slice of the
    # table is a fast copy, and summing a few extra columns costs less than gathering k
    spans = zip(which.amin(dim=0).tolist(), which.amax(dim=0).tolist())
    for g, (first, last) in enumerate(spans):
        a, b = table.bounds[g], table.bounds[g + 1]
        if last - first < 2 * k:
            rows = per_value[:, first : last + 1].contiguous()
            found = torch.nn.functional.embedding_bag(table.ids[a:b], rows, mode="sum")
            sums.append(found.index_select(1, which[:, g] - first))
        else:
            rows = per_value.index_select(1, which[:, g])  # [values, k]: group g's candidates
            sums.append(torch.nn.functional.embedding_bag(table.ids[a:b], rows, mode="sum"))
    return _certified(torch.cat(sums), table, scales, zps, spec, norm, scratch).t().contiguous()


_U = 2.0**-24  # float32's unit roundoff


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


def _certified(approx, table: _PairTable, scales, zps, spec: WeightSpec, norm: float, scratch: Scratch) -> torch.Tensor:
    """The sums in the weight's dtype: ``approx`` rounded where the rounding is certain, else recomputed.

    ``approx``: ``[cells, factors]`` float32 sums, cells in the table's order."""
    width, dtype, groups = table.cells.shape[1], table.cells.dtype, table.lo.numel()
    margin = _sum_margin(width)
    low = (approx * (1 - margin)).to(dtype)
    high = (approx * (1 + margin)).to(dtype)
    unsure = (low.view(torch.int16) != high.view(torch.int16)) | ~torch.isfinite(approx)
    row, col = torch.nonzero(unsure, as_tuple=True)
    step = max(1, _SEARCH_ELEMS // width)  # bounded buffers, however many sums are unsure
    for a in range(0, row.numel(), step):
        r, c = row[a : a + step], col[a : a + step]
        cell = table.order[r]
        flat = c * groups + table.group[cell]
        z = zps.reshape(-1)[flat].view(-1, 1) if zps is not None else None
        exact = _pointwise_errors(table.cells.index_select(0, cell), scales.reshape(-1)[flat].view(-1, 1), z, spec, norm, scratch)
        low[r, c] = exact.sum(dim=-1)
    return low


_HALF_BITS = (torch.bfloat16, torch.float16)
_GRID_LUTS: dict[tuple, torch.Tensor] = {}
_POW_LUTS: dict[tuple, torch.Tensor] = {}


def _round_to_grid(t: torch.Tensor, spec: WeightSpec, scratch: Scratch) -> None:
    """``round_to_quantized_type_args`` in place: clamp to the range, round to the grid, same dtype."""
    q_min, q_max = spec.q_range
    if spec.kind == "int":
        t.clamp_(q_min, q_max).round_()
    elif t.dtype in _HALF_BITS:
        idx = scratch.get("grid_idx", tuple(t.shape), torch.int32, t.device)
        idx.copy_(t.view(torch.uint16))
        torch.index_select(_grid_lut(spec, t.dtype, t.device), 0, idx.view(-1), out=t.view(-1))
    elif spec.num_bits == 8:
        t.clamp_(q_min, q_max).copy_(t.to(_FP8))
    else:
        t.clamp_(q_min, q_max)
        t.copy_(_code_values(spec.num_bits).to(t.device, t.dtype)[_FLOAT_CODES[spec.num_bits](t).long()])


def _code_values(bits: int) -> torch.Tensor:
    """FP4 / FP6 value of every code."""
    if bits == 6:
        return torch.cat([_FP6_MAGNITUDES, -_FP6_MAGNITUDES])
    return _FP4_VALUES


# E2M1 magnitudes by code; codes 8..15 are the negatives (sign bit 3)
_FP4_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])


def _grid_lut(spec: WeightSpec, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every 16-bit pattern clamped and rounded to the FP4 / FP6 / FP8 grid (values in ``dtype``)."""
    key = (spec.num_bits, dtype, device)
    if key not in _GRID_LUTS:
        values = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(dtype)
        values = torch.nan_to_num(values.float(), nan=0.0).clamp(*spec.q_range).to(dtype)
        if spec.num_bits == 8:
            grid = values.to(_FP8).to(dtype)
        else:
            grid = _code_values(spec.num_bits).to(dtype)[_FLOAT_CODES[spec.num_bits](values).long()]
        _GRID_LUTS[key] = grid.to(device)
    return _GRID_LUTS[key]


def _pow_lut(dtype: torch.dtype, norm: float, device: torch.device) -> torch.Tensor:
    """``v.abs().pow(norm)`` for every 16-bit pattern ``v`` (torch's own ops, in ``dtype``).

    torch computes a 16-bit power in float32 and rounds it, identically in its
    vectorised and scalar loops (checked on every pattern), so the table equals
    what the peer's ``abs().pow(norm)`` gives wherever torch evaluates it.
    """
    key = (dtype, norm, device)
    if key not in _POW_LUTS:
        values = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(dtype)
        _POW_LUTS[key] = values.abs().pow(norm).to(device)
    return _POW_LUTS[key]
