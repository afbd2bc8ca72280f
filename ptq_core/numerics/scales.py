"""Per-cell statistics, ``calculate_qparams`` op for op, and the FP4 / FP6 codes and packings.

The pieces both the quantizer (``numerics``) and the MSE search
(``numerics.mse_search``) run: reusable buffers, row chunks, min/max or max |w| per
scale cell, the reference's qparams sequence in the same dtypes, the E2M1 / E2M3
rounding and the bit packings of compressed-tensors' compressors. Torch only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import NonFiniteWeightError
from .spec import _FP4_MAX, _FP6_MAX, _FP8, _FP8_MAX, _MX_ELEM_MANTISSA, _MX_ELEM_OFFSET, WeightSpec

__all__ = ["Scratch", "WeightStats", "global_scale_from_absmax", "tensor_absmax"]

_CHUNK_ELEMS = 1 << 22  # ~4M elements per elementwise step
# Elements per slice of a chunk for chains of cheap passes on a CPU (statistics, integer codes):
# 512 KiB of 16-bit values, so a slice and its temporaries stay in a core's 2 MiB L2 cache, where
# an integer pass costs about half of what it costs streaming a multi-megabyte chunk through L3.
_SLICE_ELEMS = 1 << 18


# --------------------------------------------------------------------------- buffers
class Scratch:
    """Per-thread reusable buffers.

    A fresh multi-megabyte allocation is page-faulted in on first touch, which
    costs more than the arithmetic; reusing a few grow-only buffers per worker
    keeps the kernels compute bound and the memory flat.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.device], torch.Tensor] = {}

    def get(self, key: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        numel = math.prod(shape)
        nbytes = numel * (torch.finfo(dtype).bits if dtype.is_floating_point else torch.iinfo(dtype).bits) // 8
        buf = self._buffers.get((key, device))
        if buf is None or buf.numel() < nbytes:
            buf = self._buffers[(key, device)] = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=device)
        return buf[:nbytes].view(dtype).view(shape)


def _row_chunks(rows: int, cols: int, multiple: int = 1, elems: int | None = None):
    step = max(multiple, ((elems or _CHUNK_ELEMS) // max(cols, 1)) // multiple * multiple)
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


# --------------------------------------------------------------------------- statistics
def tensor_absmax(weight: torch.Tensor, scratch: Scratch | None = None) -> torch.Tensor:
    """max |w| over the whole tensor, in the weight's dtype (0-dim).

    For a fused group the global absmax is the max of its members' values,
    which equals the observer's ``max(max_vals.max(), -min_vals.min())``.
    """
    scratch = scratch or Scratch()
    out = None
    for a, b in _row_chunks(weight.shape[0], weight.shape[1]):
        m = _absmax(weight[a:b], (0, 1), False, scratch)
        out = m if out is None else torch.maximum(out, m)
    return out


_SIGNLESS = {
    torch.bfloat16: (torch.int16, 0x7FFF),
    torch.float16: (torch.int16, 0x7FFF),
    torch.float32: (torch.int32, 0x7FFFFFFF),
    torch.float64: (torch.int64, 0x7FFFFFFFFFFFFFFF),
}


def _slices(cells: torch.Tensor, dims: tuple[int, ...] = (), elems: int | None = None):
    """Spans of ``cells``' first dimension of about ``elems`` (``_SLICE_ELEMS``) elements on a CPU
    (one span when ``dims`` reduce it, or on a GPU, where slicing only adds kernel launches)."""
    n = cells.shape[0]
    if 0 in [d % cells.dim() for d in dims] or n == 0 or cells.device.type != "cpu":
        return [(0, n)]
    step = max(1, (elems or _SLICE_ELEMS) // max(cells.numel() // n, 1))
    return [(a, min(n, a + step)) for a in range(0, n, step)]


def _reduced(cells: torch.Tensor, dims: tuple[int, ...], keepdim: bool, dtype: torch.dtype) -> torch.Tensor:
    """An empty tensor shaped like a reduction of ``cells`` over ``dims``."""
    dims = {d % cells.dim() for d in dims}
    shape = [1 if i in dims else n for i, n in enumerate(cells.shape) if keepdim or i not in dims]
    return torch.empty(shape, dtype=dtype, device=cells.device)


def _absmax(cells: torch.Tensor, dims: tuple[int, ...], keepdim: bool, scratch: Scratch) -> torch.Tensor:
    """max |x| over ``dims``, exactly, via integer maxima of the sign-cleared bit patterns.

    For non-negative IEEE floats the bit patterns order like the values, so
    clearing the sign bit and taking an integer max gives the float max |x|
    (NaN and Inf included: they sort above every finite value). torch's integer
    reductions are several times faster than its bf16/f16 ones. Slice by slice of
    the first dimension where ``dims`` leave it, so the cleared bits stay in cache.
    """
    int_dtype, mask = _SIGNLESS[cells.dtype]
    out = _reduced(cells, dims, keepdim, int_dtype)
    for a, b in _slices(cells, dims):
        part = cells[a:b]
        bits = scratch.get("absbits", tuple(part.shape), int_dtype, cells.device)
        torch.bitwise_and(part.view(int_dtype), mask, out=bits)
        torch.amax(bits, dim=dims, keepdim=keepdim, out=out[a:b] if out.dim() else out)
    return out.view(cells.dtype)


def _minmax16(cells: torch.Tensor, dims: tuple[int, ...], keepdim: bool, scratch: Scratch):
    """(min, max) over ``dims`` of a 16-bit float tensor from integer reductions of its bits.

    As int16, non-negative floats (sign bit clear) are ``[0, 0x7FFF]`` ordered like their
    values and negative ones are ``[-0x8000, -1]`` ordered by magnitude; with the sign bit
    flipped the roles swap. So the max is the largest int16 when it is non-negative (some
    value is), else the smallest (all negative: the one nearest zero); the min is the
    largest flipped pattern when that is non-negative (some value is negative: the one of
    largest magnitude), else the smallest int16 (none is: the smallest value). NaN and
    Inf sort beyond every finite value of their sign, so a cell holding one has a
    non-finite min or max. A zero extreme may come out as -0.0 where torch's float
    reduction gives 0.0 or the reverse: the qparams take ``min(lo, 0)`` and ``max(hi, 0)``,
    equal for both zeros. One integer pass and two reductions (a third, the smallest
    int16, only where some cell holds values of one sign), against two float reductions
    that cost several times more.
    """
    top, neg = (_reduced(cells, dims, keepdim, torch.int16) for _ in range(2))
    for a, b in _slices(cells, dims):  # slice by slice, as _absmax
        bits = cells[a:b].view(torch.int16)
        flipped = scratch.get("absbits", tuple(bits.shape), torch.int16, cells.device)
        torch.bitwise_xor(bits, -0x8000, out=flipped)
        torch.amax(bits, dim=dims, keepdim=keepdim, out=top[a:b] if top.dim() else top)
        torch.amax(flipped, dim=dims, keepdim=keepdim, out=neg[a:b] if neg.dim() else neg)
    lo, hi = neg ^ -0x8000, top
    if bool(torch.minimum(top, neg).lt(0).any()):  # a cell of one sign: its other extreme is the smallest int16
        bottom = cells.view(torch.int16).amin(dim=dims, keepdim=keepdim)
        hi = torch.where(top >= 0, top, bottom)
        lo = torch.where(neg >= 0, lo, bottom)
    return lo.view(cells.dtype), hi.view(cells.dtype)


def global_scale_from_absmax(absmax: torch.Tensor) -> torch.Tensor:
    """NVFP4 global scale, exactly as ``generate_gparam`` computes it (float32 ``[1]``).

    Note the division happens in the weight's dtype (a Python float divided by a
    bf16 tensor is ``reciprocal() * 2688`` in bf16) before the cast to float32.
    """
    absmax = absmax.reshape(1)
    min_vals = torch.min(-absmax, torch.zeros_like(absmax))
    max_vals = torch.max(absmax, torch.zeros_like(absmax))
    max_val_pos = torch.max(torch.abs(min_vals), torch.abs(max_vals))
    max_val_pos = torch.clamp(max_val_pos, min=torch.finfo(max_val_pos.dtype).tiny)
    global_scale = _FP8_MAX * _FP4_MAX / max_val_pos
    global_scale = torch.nan_to_num(global_scale, nan=1.0, posinf=1.0, neginf=1.0)
    return global_scale.to(torch.float32).reshape([1])


def _padded(chunk: torch.Tensor, bh: int, bw: int, scratch: Scratch) -> torch.Tensor:
    """A row chunk zero-padded to whole blocks (as the reference pads), viewed as blocks."""
    r, c = chunk.shape
    rp, cp = r + (-r) % bh, c + (-c) % bw
    if (rp, cp) != (r, c):
        padded = scratch.get("pad", (rp, cp), chunk.dtype, chunk.device)
        padded.zero_()
        padded[:r, :c].copy_(chunk)
        chunk = padded
    return chunk.view(rp // bh, bh, cp // bw, bw)


def _cells(chunk: torch.Tensor, spec: WeightSpec, scratch: Scratch) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The chunk viewed so that each scale cell's elements lie along ``dims``."""
    r, c = chunk.shape
    if spec.strategy == "block":
        return _padded(chunk, *spec.block, scratch), (1, 3)
    if spec.strategy in ("group", "tensor_group"):
        return chunk.view(r, c // spec.group_size, spec.group_size), (-1,)
    if spec.strategy == "channel":
        return chunk, (1,)
    return chunk, (0, 1)


def _stats(chunk: torch.Tensor, spec: WeightSpec, scratch: Scratch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-scale-cell statistics of a row chunk: (absmax, None) when symmetric, else (min, max).

    Symmetric quantization only ever uses max(|min(min,0)|, |max(max,0)|), which
    is exactly the cell's max |w|: one abs-max pass replaces two reductions.
    Zero padding (block strategy) changes neither statistic.
    """
    cells, dims = _cells(chunk, spec, scratch)
    keep = spec.strategy == "channel"
    if spec.symmetric:
        lo, hi = _absmax(cells, dims, keep, scratch), None
    elif cells.dtype in (torch.bfloat16, torch.float16):
        lo, hi = _minmax16(cells, dims, keep, scratch)
    else:
        lo, hi = cells.amin(dim=dims, keepdim=keep), cells.amax(dim=dims, keepdim=keep)
    if spec.strategy == "tensor":
        lo, hi = lo.reshape(1), (hi.reshape(1) if hi is not None else None)
    return lo, hi


# --------------------------------------------------------------------------- qparams
def _round_to_power_2(x: torch.Tensor, elem_mantissa: int = 1) -> torch.Tensor:
    """Round to the closest power of two by bit masking (compressed-tensors' MX rule)."""
    bits = {torch.bfloat16: (torch.uint16, 7, 8), torch.float16: (torch.uint16, 10, 5), torch.float32: (torch.uint32, 23, 8), torch.float64: (torch.uint64, 52, 11)}
    int_dtype, mantissa, exponent = bits[x.dtype]
    wide = x.view(int_dtype).to(torch.int64 if int_dtype is torch.uint64 else torch.int32)
    add = 1 << (mantissa - elem_mantissa - 1)
    mask = ((1 << (exponent + 1)) - 1) << mantissa
    rounded = torch.bitwise_and(wide + add, mask)
    if int_dtype is torch.uint16:
        return rounded.to(int_dtype).view(x.dtype)
    return rounded.view(x.dtype)


def _eps(dtype: torch.dtype) -> float:
    if dtype == _FP8:
        return 0.125
    if dtype.is_floating_point:
        return torch.finfo(dtype).eps
    return 1


def _qparams(
    lo: torch.Tensor, hi: torch.Tensor | None, spec: WeightSpec, global_scale: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``calculate_qparams`` for min/max statistics, op for op (small tensors only)."""
    device = lo.device
    q_min, q_max = (torch.tensor(v, device=device) for v in spec.q_range)
    bit_range = q_max - q_min
    zero_points = None
    if spec.symmetric:
        max_val_pos = lo  # already max(|min(min,0)|, |max(max,0)|)
        if spec.is_mx and lo.dtype == torch.bfloat16 and global_scale is None and spec.scale_dtype == torch.uint8:
            return _mx_scales_bf16(lo, spec), None
        if spec.is_mx:
            p2 = _round_to_power_2(max_val_pos, _MX_ELEM_MANTISSA[spec.num_bits])
            scales = 127 + torch.floor(torch.log2(p2)) - _MX_ELEM_OFFSET[spec.num_bits]
        else:
            scales = max_val_pos / (bit_range.to(max_val_pos.dtype) / 2)
    else:
        min_vals = torch.min(lo, torch.zeros_like(lo))
        max_vals = torch.max(hi, torch.zeros_like(hi))
        scales = (max_vals - min_vals) / bit_range.to(max_vals.dtype)
        zero_points = q_min - (min_vals / scales)
        zero_points = torch.clamp(zero_points, *spec.q_range)  # the same exact bounds; tensor bounds take a slow mixed-dtype loop
    if global_scale is not None:
        scales = global_scale * scales
    if spec.scale_dtype is not None:
        original = scales.dtype
        if spec.scale_dtype.is_floating_point:
            info = torch.finfo(spec.scale_dtype)
            scales = torch.clamp(scales, info.min, info.max).to(spec.scale_dtype).to(original)
        else:
            info = torch.iinfo(spec.scale_dtype)
            scales = torch.round(torch.clamp(scales, info.min, info.max)).to(spec.scale_dtype).to(original)
    if spec.is_mx:
        original = scales.dtype
        scales = (2.00 ** ((scales.to(torch.int32) - 127).to(torch.float))).to(original)
    eps = _eps(spec.scale_dtype if spec.scale_dtype is not None else scales.dtype)
    scales = torch.where(scales == 0, torch.tensor(eps, dtype=scales.dtype, device=device), scales)
    if zero_points is not None:  # round_to_quantized_type_dtype(zero_points, zp_dtype)
        if spec.zp_dtype.is_floating_point:
            info = torch.finfo(spec.zp_dtype)
            zero_points = torch.clamp(zero_points, info.min, info.max).to(spec.zp_dtype)
        else:
            info = torch.iinfo(spec.zp_dtype)
            zero_points = torch.round(torch.clamp(zero_points, info.min, info.max)).to(spec.zp_dtype)
    return scales, zero_points


def _mx_scales_bf16(absmax: torch.Tensor, spec: WeightSpec) -> torch.Tensor:
    """The MX branch of :func:`_qparams` for bf16 statistics, from the exponent bits.

    The reference rounds max |w| to a power of two ``p2`` by bit masking, takes
    ``127 + floor(log2(p2)) - offset``, clamps it to a uint8 exponent ``e`` and builds
    ``2**(e - 127)``. With ``E`` the biased exponent of ``p2``: ``log2(p2) = E - 127``
    exactly for a normal ``p2``, ``E = 0`` (``p2 = 0``: ``-inf``) clamps to 0 as
    ``E - offset < 0`` does, and ``E = 255`` (``p2 = inf``) gives 255. The scale's bits
    are then ``e << 7`` (``e = 255``: inf) or, for ``e = 0``, the subnormal ``2**-127``;
    none is zero, so no epsilon replaces one. A dozen passes over small tensors become four.
    """
    add = 1 << (7 - _MX_ELEM_MANTISSA[spec.num_bits] - 1)
    biased = (absmax.view(torch.int16).to(torch.int32) + add).bitwise_right_shift_(7).bitwise_and_(0xFF)
    e = torch.where(biased == 255, 255, (biased - _MX_ELEM_OFFSET[spec.num_bits]).clamp_(min=0))
    bits = torch.where(e == 0, 0x40, e << 7)
    return bits.to(torch.int16).view(torch.bfloat16)


# --------------------------------------------------------------------------- elementwise
def _fp4_codes(v: torch.Tensor) -> torch.Tensor:
    """E2M1 code (sign bit 3, magnitude index 0..7) of values already clamped to +-6.

    Equals compressed-tensors' ``cast_to_fp4`` (ties: 0.25->0, 0.75->1, 1.25->1,
    1.75->2, 2.5->2, 3.5->4, 5->4) followed by ``pack_fp4_to_uint8``'s index map;
    a negative value that rounds to zero keeps its sign bit (``-0.0`` there).
    """
    a = v.abs()
    idx = (a > 0.25).to(torch.uint8)
    idx += a >= 0.75
    idx += a > 1.25
    idx += a >= 1.75
    idx += a > 2.5
    idx += a >= 3.5
    idx += a > 5.0
    idx |= (v < 0).to(torch.uint8) << 3
    return idx


# E2M3 magnitudes by code (0..31: m / 8, then (1 + m / 8) * 2**e); codes 32..63 are the negatives
_FP6_MAGNITUDES = torch.tensor([m / 8 for m in range(8)] + [(1 + m / 8) * 2**e for e in range(3) for m in range(8)])


def _fp6_codes(v: torch.Tensor) -> torch.Tensor:
    """E2M3 code (sign bit 5, magnitude index 0..31) of values already clamped to +-7.5.

    compressed-tensors' ``cast_to_fp6`` (in float32: step 2**(max(e, 0) - 3) for a
    magnitude with exponent e, round half to even, saturate at 7.5) followed by
    ``pack_fp6_to_uint8``'s table index; the sign is the input's sign bit, so a
    negative value that rounds to zero keeps it.
    """
    a = v.abs().float()
    exponent = ((a.view(torch.int32) >> 23) & 0xFF).sub_(127).clamp_(min=0)
    step = torch.exp2(exponent - 3.0)
    rounded = torch.round(a / step).mul_(step).clamp_(max=_FP6_MAX)
    codes = torch.searchsorted(_FP6_MAGNITUDES.to(v.device), rounded).to(torch.uint8)
    return codes | (torch.signbit(v).to(torch.uint8) << 5)


_FLOAT_CODES: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {4: _fp4_codes, 6: _fp6_codes}
_CODE_LUTS: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}


def _code_lut(bits: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """FP4 / FP6 codes for every bit pattern of a 16-bit float, or of a float32's top 16 bits.

    float32 entries come in pairs: ``[2*hi]`` for a value whose low 16 bits are
    zero (exactly the 16-bit prefix) and ``[2*hi+1]`` for anything above it.
    No rounding threshold lies strictly between the two (every FP4 / FP6
    threshold is a bf16 value), so the pair determines the code exactly.
    """
    key = (bits, dtype, device)
    if key not in _CODE_LUTS:
        prefix = torch.arange(65536, dtype=torch.int32)
        if dtype == torch.float32:
            exact = (prefix << 16).view(torch.float32)
            above = ((prefix << 16) | 1).view(torch.float32)
            values = torch.stack([exact, above], dim=1).reshape(-1)
        else:
            values = prefix.to(torch.int16).view(dtype).to(torch.float32)
        top = _FP6_MAX if bits == 6 else _FP4_MAX
        values = torch.nan_to_num(values, nan=0.0).clamp(-top, top)
        _CODE_LUTS[key] = _FLOAT_CODES[bits](values).to(device)
    return _CODE_LUTS[key]


def _float_codes(v: torch.Tensor, out: torch.Tensor, scratch: Scratch, bits: int) -> torch.Tensor:
    """FP4 / FP6 codes of clamped values by table lookup (3-4 passes over memory instead of ~15).

    float64 has no 16-bit prefix that decides its code, so it takes the direct
    computation (the reference rounds FP4 in float64, FP6 after a float32 cast).
    """
    if v.dtype == torch.float64:
        return out.copy_(_FLOAT_CODES[bits](v))
    lut = _code_lut(bits, v.dtype, v.device)
    flat = v.reshape(-1)
    idx = scratch.get("lut_idx", (flat.numel(),), torch.int32, v.device)
    if v.dtype == torch.float32:
        value_bits = flat.view(torch.int32)
        low = scratch.get("lut_low", (flat.numel(),), torch.int32, v.device)
        torch.bitwise_right_shift(value_bits, 16, out=idx)
        idx.bitwise_and_(0xFFFF).mul_(2)
        torch.bitwise_and(value_bits, 0xFFFF, out=low)
        idx.add_(low.clamp_(max=1))
    else:
        idx.copy_(flat.view(torch.int16))
        idx.bitwise_and_(0xFFFF)
    return torch.index_select(lut, 0, idx, out=out.reshape(-1)).view(out.shape)


def _pack_fp6(codes: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Four 6-bit codes in three bytes, little-endian (``pack_fp6_to_uint8``)."""
    rows = codes.shape[0]
    c = codes.view(rows, -1, 4).to(torch.int32)
    word = c[..., 0] | (c[..., 1] << 6) | (c[..., 2] << 12) | (c[..., 3] << 18)
    triples = out.view(rows, -1, 3)
    for i in range(3):
        triples[..., i] = (word >> (8 * i)) & 0xFF
    return out


def _pack_nibbles(codes: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Two FP4 codes per byte, low nibble first (``pack_fp4_to_uint8``)."""
    pairs = codes.view(codes.shape[0], -1, 2)
    if out is None:
        return pairs[..., 0] | (pairs[..., 1] << 4)
    torch.bitwise_left_shift(pairs[..., 1], 4, out=out)
    return out.bitwise_or_(pairs[..., 0])


def _pack_int32(q: torch.Tensor, num_bits: int, scratch: Scratch | None = None) -> torch.Tensor:
    """Dense little-endian bit packing of int8 values into int32 words along dim 1.

    Same bits as compressed-tensors' ``pack_to_int32``: element i of each
    32-element group starts at bit i*num_bits; values are offset to unsigned.
    """
    rows, cols = q.shape
    offset = 1 << (num_bits - 1)
    packed_cols = math.ceil(cols * num_bits / 32)
    pad = (-cols) % 32
    if num_bits in (4, 8):  # whole bytes: build them, then view 4 bytes as a word
        scratch = scratch or Scratch()
        u = scratch.get("pack_u8", (rows, cols + pad), torch.uint8, q.device)
        u[:, cols:] = 0  # the reference pads after adding the offset
        unsigned = u[:, :cols]
        if num_bits == 8:  # q + 128 (mod 256) is q's byte with the top bit flipped
            torch.bitwise_xor(q.view(torch.uint8), 0x80, out=unsigned)
        else:  # q + 8 fits int8 for q in [-8, 7]
            torch.add(q, offset, out=unsigned.view(torch.int8))
        if num_bits == 8:
            packed = u
        else:
            packed = _pack_nibbles(u, scratch.get("pack_nib", (rows, (cols + pad) // 2), torch.uint8, q.device))
        words = packed.view(torch.int32)
        return words if not pad else words[:, :packed_cols].contiguous()
    v = q.to(torch.int64) + offset
    if pad:
        v = torch.nn.functional.pad(v, (0, pad))
    groups = v.view(rows, -1, 32)
    words = torch.zeros(rows, groups.shape[1], num_bits, dtype=torch.int64, device=q.device)
    for i in range(32):
        start = i * num_bits
        w, s = divmod(start, 32)
        words[:, :, w] |= (groups[:, :, i] << s) & 0xFFFFFFFF
        if s + num_bits > 32:
            words[:, :, w + 1] |= groups[:, :, i] >> (32 - s)
    out = words.view(rows, -1)[:, :packed_cols]
    # reinterpret the low 32 bits as signed int32 (two's complement)
    out = torch.where(out >= 2**31, out - 2**32, out)
    return out.to(torch.int32).contiguous()


@dataclass(frozen=True)
class WeightStats:
    """Per-scale-cell statistics of one weight, as its observer leaves them.

    Attributes:
        lo: symmetric schemes: max |w| of each cell (all the scale needs);
            asymmetric ones: the cell's min. Shaped like the scale (weight dtype).
        hi: asymmetric schemes: the cell's max; ``None`` when symmetric.
    """

    lo: torch.Tensor
    hi: torch.Tensor | None

    def absmax(self) -> torch.Tensor:
        """max |.| over all cells (0-dim): what a fused NVFP4 group's global scale is built from."""
        if self.hi is None:
            return self.lo.amax()
        return torch.maximum(self.hi.amax(), -self.lo.amin())

    def rows(self, spec: WeightSpec, first: int, end: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The cells of weight rows ``[first, end)`` (block strategy: whole block rows)."""
        if spec.strategy == "tensor":
            return self.lo, self.hi
        if spec.strategy == "block":
            bh = spec.block[0]
            first, end = first // bh, math.ceil(end / bh)
        return self.lo[first:end], (self.hi[first:end] if self.hi is not None else None)


_INF_BITS = {torch.bfloat16: 0x7F80, torch.float16: 0x7C00}


def _all_finite(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is finite; for 16-bit floats from the bit patterns
    (the exponent field below all ones), as torch's ``isfinite`` is several times slower there."""
    inf = _INF_BITS.get(t.dtype)
    if inf is None or t.numel() == 0:
        return bool(torch.isfinite(t).all())
    return bool((t.view(torch.int16) & 0x7FFF).amax() < inf)


def _finite(lo: torch.Tensor, hi: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not _all_finite(lo) or (hi is not None and not _all_finite(hi)):
        raise NonFiniteWeightError("the weight holds NaN or Inf values")
    return lo, hi
