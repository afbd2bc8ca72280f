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
  errors are computed once per (distinct qparams, distinct value), for every factor
  when the table is built; each cell's sum is a float32 sum of table entries
  (``embedding_bag`` over runs of statistics groups whose candidates share a column
  slice, :mod:`.table_sums`) whose rounding to the weight's dtype is certified
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
from .table_sums import _F32_MAX, _TABLE_MAX_WIDTH, _bits16, _patterns, _qparams_key, _runs, _sum_margin

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
    pass before it stops); a pair table's call costs more in itself than per factor,
    so its blocks are longer (:func:`_first_block`, :func:`observers.block_size`) and
    may evaluate a few factors past the stop, which :func:`observers.keep_best` drops.
    """
    params = observers.mse_params(spec.observer_kwargs)
    # NVFP4's search takes scales unrounded and without the global scale (the peer drops scale_dtype)
    search = replace(spec, scale_dtype=None) if spec.strategy == "tensor_group" else spec
    steps = len(params.shrink)
    shrink = observers.shrink_tensor(params, weight.dtype, weight.device)
    chunks = _search_chunks(weight, spec, search, params, shrink, scratch)
    cells = sum(c.lo.numel() for c in chunks)
    first = _first_block(chunks, params.patience)
    step, stale, size = 0, 0, 0
    while step < steps:
        size = min(observers.block_size(step, steps, stale, params.patience, size, first), max(1, _SEARCH_CELLS // cells))
        factors = shrink[step : step + size]
        results = []
        improved_any = torch.zeros(size, dtype=torch.bool, device=weight.device)
        for c in chunks:
            if c.table is not None:  # [factors, cells] with the cells in the table's order
                err = _table_errors(c.table, slice(step, step + size), search, params.norm, scratch)
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


def _first_block(chunks: list[_SearchChunk], patience: int) -> int:
    """The first block of factors: 1 (as short as the peer's stop allows) on the direct path.

    A pair table's call costs a pass over its elements, each factor in it a few passes
    over its cells: the first block takes the ``patience + 1`` factors a search that
    improves only at its first factor evaluates, plus ``_FIRST_EXTRA`` (searches that stop
    early mostly last improve within the first few factors: at factor 0 to 2 for MXFP8A16
    and W8A16 on the benchmark's weight, so one call suffices there).
    """
    if any(c.table is None for c in chunks):
        return 1
    return math.ceil(patience) + 1 + _FIRST_EXTRA


_FIRST_EXTRA = 2


def _search_chunks(weight: torch.Tensor, spec: WeightSpec, search: WeightSpec, params, shrink: torch.Tensor,
                   scratch: Scratch) -> list[_SearchChunk]:
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
        spans = list(_row_chunks(rows, cols, multiple, elems))
    chunks = []
    for a, b in spans:
        lo, hi = _finite(*_stats(weight[a:b], spec, scratch))
        lo, hi = _expanded(lo, params.expand), (_expanded(hi, params.expand) if hi is not None else None)
        # a weight of one chunk (most) keeps its table's ids in scratch: no page faults on reuse
        ids_buffer = scratch if len(spans) == 1 else None
        table = _pair_table(weight[a:b], lo, hi, search, params.norm, shrink, scratch, ids_buffer) if params.shrink else None
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
@dataclass(frozen=True)
class _PairTable:
    """A row chunk's cells grouped by statistics, as ids of the chunk's distinct values,
    with every distinct value's error under every factor's candidate qparams.

    Cells with the same statistics (bit for bit) get the same candidate scales, and a
    chunk holds few distinct values, so every element's error is one of
    ``distinct qparams x distinct values`` numbers (``per_value``, computed once with
    the peer's elementwise ops); :func:`_table_errors` sums each cell's entries.
    """

    cells: torch.Tensor  # [cells, width], the chunk in the peer's order
    group: torch.Tensor  # [cells] int64: the cell's statistics group
    order: torch.Tensor  # [cells] int64: the cells sorted by group
    ids: torch.Tensor  # [cells, width] int32: value ids, cells in ``order``
    bounds: tuple[int, ...]  # group g's cells are ``order[bounds[g]:bounds[g + 1]]``
    sorted_group: torch.Tensor  # [cells] int64: ``group[order]``
    scales: torch.Tensor  # [factors, groups]: each group's candidate qparams
    zps: torch.Tensor | None
    cols: torch.Tensor  # [factors, groups] int64: their column (id among the distinct qparams, by scale)
    values: torch.Tensor  # [distinct values] in the weight's dtype
    qparams: tuple[torch.Tensor, torch.Tensor | None]  # [1, columns]: each column's scale and zero point
    per_value: torch.Tensor | None  # [values, columns] float32 elementwise errors; None: over _TABLE_ENTRIES


def _tables_apply(weight: torch.Tensor, spec: WeightSpec) -> bool:
    """Whether the search may use pair tables: 16-bit errors (whose float32 sums the table
    path certifies) and cells of at most ``_TABLE_MAX_WIDTH`` elements."""
    if weight.dtype not in _HALF_BITS or spec.strategy in ("tensor", "block"):
        return False
    width = weight.shape[1] if spec.strategy == "channel" else spec.group_size
    return width <= _TABLE_MAX_WIDTH


def _pair_table(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor | None, spec: WeightSpec, norm: float,
                factors: torch.Tensor, scratch: Scratch, ids_buffer: Scratch | None = None) -> _PairTable | None:
    """The chunk's :class:`_PairTable`, or ``None`` where the table would not pay.

    Bit patterns are counted rather than sorted (``bincount`` over the 65536 patterns),
    and the per-element passes write into scratch buffers (a fresh 16 MB buffer costs
    a page fault per 4 kB); so do the ids where ``ids_buffer`` is given (only one table
    is alive at a time)."""
    if not _tables_apply(x, spec):
        return None
    cells = _search_cells(x, spec, scratch)
    n, width = cells.shape
    if hi is None:  # one 16-bit statistic per cell
        stat = _bits16(lo).to(torch.int32)
        uniq, id_of = _patterns(stat)
        group = torch.index_select(id_of, 0, stat).long()
    else:
        uniq, group = torch.unique((_bits16(lo) << 16) | _bits16(hi), return_inverse=True)
    groups = uniq.numel()
    order = torch.argsort(group.to(torch.int16 if groups < 2**15 else torch.int32), stable=True)
    sorted_cells = torch.index_select(cells, 0, order, out=scratch.get("pair_cells", (n, width), x.dtype, x.device))
    bits = scratch.get("pair_bits", (n * width,), torch.int32, x.device).copy_(sorted_cells.view(-1).view(torch.uint16))
    values, id_of = _patterns(bits)
    if values.numel() * groups > cells.numel() // _TABLE_GAIN:
        return None
    out = ids_buffer.get("pair_ids", (n * width,), torch.int32, x.device) if ids_buffer is not None else None
    ids = torch.index_select(id_of, 0, bits, out=out).view(n, width)
    counts = torch.bincount(group, minlength=groups)
    bounds = (0, *torch.cumsum(counts, 0).tolist())
    as_dtype = lambda b: b.to(torch.int16).view(x.dtype)  # noqa: E731
    lo_g, hi_g = (as_dtype(uniq >> 16), as_dtype(uniq & 0xFFFF)) if hi is not None else (as_dtype(uniq), None)
    cand_hi = observers.candidates(hi_g, factors) if hi_g is not None else None
    scales, zps = _qparams(observers.candidates(lo_g, factors), cand_hi, spec, None)  # [factors, groups]
    keys, cols = torch.unique(_qparams_key(scales, zps), return_inverse=True)
    first = torch.zeros(keys.numel(), dtype=torch.int64).scatter_(0, cols, torch.arange(cols.numel()))
    qparams = scales.reshape(-1)[first].view(1, -1), (zps.reshape(-1)[first].view(1, -1) if zps is not None else None)
    table = _PairTable(cells, group, order, ids, bounds, group[order], scales, zps, cols.view(scales.shape),
                       as_dtype(values), qparams, None)
    if keys.numel() * values.numel() > _TABLE_ENTRIES:  # errors per factor block (:func:`_table_errors`)
        return table
    return replace(table, per_value=_per_value(table, slice(None), spec, norm, scratch))


def _per_value(table: _PairTable, cols, spec: WeightSpec, norm: float, scratch: Scratch) -> torch.Tensor:
    """``[values, columns]``: every distinct value's error under the qparams of columns ``cols``."""
    s, z = table.qparams
    z = z[:, cols] if z is not None else None
    return _pointwise_errors(table.values.view(-1, 1), s[:, cols], z, spec, norm, scratch).float()


_TABLE_GAIN = 1  # the table path needs at least this many elements per table row
_TABLE_ENTRIES = 1 << 23  # (distinct qparams x distinct values) errors a table holds (32 MB); more: per factor block


def _table_errors(table: _PairTable, steps: slice, spec: WeightSpec, norm: float, scratch: Scratch) -> torch.Tensor:
    """``[factors, cells]`` errors of the factors ``steps`` (cells in ``table.order``), equal to
    :func:`_mse_errors`' without a pass per element.

    Each cell's sum runs over its elements' ``per_value`` rows in float32 (``embedding_bag``),
    in another order than torch's reduction. Both float32 sums of the same non-negative
    numbers lie within ``gamma(width - 1)`` (relative) of the exact sum (:func:`_sum_margin`),
    so where that whole interval rounds to one value of the weight's dtype, that value is
    the peer's. The rest (on the benchmark's weight: 0.5% of the sums of 128-wide groups,
    8% of 2048-wide channels; and any non-finite sum) are summed again on the peer's layout
    with torch's reduction (:func:`_certified`).
    """
    which, per_value = table.cols[steps], table.per_value
    k = which.shape[0]
    if per_value is None:  # a table too big for all factors: this block's columns only, or half the block
        used, which = torch.unique(which, return_inverse=True)
        if k > 1 and used.numel() * table.values.numel() > _TABLE_ENTRIES:
            first, stop = steps.indices(table.cols.shape[0])[:2]
            half = first + k // 2
            return torch.cat([_table_errors(table, slice(first, half), spec, norm, scratch),
                              _table_errors(table, slice(half, stop), spec, norm, scratch)])
        per_value = _per_value(table, used, spec, norm, scratch)
    sums = torch.empty(table.ids.shape[0], k, dtype=torch.float32)
    runs = list(_runs(which))
    start = torch.empty(which.shape[1], dtype=torch.int64)
    for g0, g1, c0, _ in runs:
        start[g0:g1] = c0
    # [cells, k]: each sum's column in its run's slice (gathered from a contiguous [groups, k])
    pick = torch.index_select((which - start).t().contiguous(), 0, table.sorted_group)
    for g0, g1, c0, c1 in runs:
        # the run's qparams lie in columns [c0, c1): a column slice of the table (a fast copy);
        # summing a few columns no cell of the run needs costs less than another call
        a, b = table.bounds[g0], table.bounds[g1]
        found = torch.nn.functional.embedding_bag(table.ids[a:b], per_value[:, c0:c1].contiguous(), mode="sum")
        torch.gather(found, 1, pick[a:b], out=sums[a:b])
    zps = table.zps[steps] if table.zps is not None else None
    return _certified(sums, table, table.scales[steps], zps, spec, norm, scratch).t().contiguous()


def _certified(approx, table: _PairTable, scales, zps, spec: WeightSpec, norm: float, scratch: Scratch) -> torch.Tensor:
    """The sums in the weight's dtype: ``approx`` rounded where the rounding is certain, else recomputed.

    ``approx``: ``[cells, factors]`` float32 sums, cells in the table's order."""
    width, dtype, groups = table.cells.shape[1], table.cells.dtype, len(table.bounds) - 1
    margin = _sum_margin(width)
    shape = tuple(approx.shape)
    wide = scratch.get("cert_wide", shape, torch.float32, approx.device)
    low = torch.mul(approx, 1 - margin, out=wide).to(dtype)
    high = scratch.get("cert_high", shape, dtype, approx.device).copy_(torch.mul(approx, 1 + margin, out=wide))
    flags = scratch.get("cert_flags", (2, *shape), torch.uint8, approx.device).view(torch.bool)
    unsure = torch.ne(low.view(torch.int16), high.view(torch.int16), out=flags[0])
    unsure |= torch.le(approx, _F32_MAX, out=flags[1]).logical_not_()  # inf and NaN sums
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
