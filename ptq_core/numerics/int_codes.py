"""Integer codes of 16-bit weights in fewer passes, byte-identical to the reference's.

The reference quantizes ``x / scale (+ zp)`` with ``clamp``, ``round`` (half to even) and
a cast to int8, all in the weight's dtype, and the compressor then adds the offset and
packs. For bf16 and fp16 the same codes come from integer operations on the scaled
values' bit patterns, which cost a fraction of a 16-bit float pass:

* **rounding by a magic addend** (4 bits): adding ``M = 1.5 * 2**m + 2**(bits - 1)`` (``m``
  the dtype's mantissa bits) puts every ``|t| < 2**(m - 1) - 8`` in the binade whose
  step is 1, so the sum's correctly rounded value is ``round_half_even(t) + M``: the
  float32 sum torch forms is exact for ``|t| >= 2**-9`` (fp16: ``2**-3``), and below that
  the result is ``M`` either way. The sum's low mantissa bits are then the code plus the offset, and the
  clamp is an integer clamp of the bit patterns (monotone inside one binade);
* **an integer clamp** (8 bits, where bf16 holds no binade of step 1 wide enough): clamping
  to integer bounds commutes with ``round``. For symmetric min/max ranges the rounded values
  lie in ``[q_min, q_max + 1]``; the bit patterns of non-negative floats order like their
  values and negative ones are negative int16, so ``min(bits, bits(q_max))`` is the clamp.
  An MSE search's shrunk ranges leave values below ``q_min`` too, and sign-magnitude bit
  patterns order no two-sided clamp, so those rounded values are converted to int16 and
  clamped there (exact while they fit int16, which the bound below gives).

Both paths need a bound on ``|t|``, which holds where the scales are normal numbers:
a range is the cell's statistic times a factor ``f >= f_min`` (1 for min/max; an MSE
observer's ``expand`` times its smallest shrink factor), formed with at most four roundings
to the dtype (expand, shrink, an asymmetric difference, ``/ levels``: relative error at most
2**-8 each, as every intermediate of a normal scale is normal) and a few float32 ones
(2**-24), so ``|x / scale| <= levels / (f_min * (1 - 2**-8)**6)``; a zero point adds at most ``2**(bits - 1)``
and the quotient and the sum round once each (:func:`_bound`). :func:`applies` checks the
bound and the scales; the caller keeps the reference's ops otherwise.
``tests/core/test_int_codes.py`` checks the paths on every 16-bit pattern.

The whole chain (divide, add the zero point, round, clamp, pack) runs on row slices of
``scales._SLICE_ELEMS`` elements, whose temporaries stay in the core's L2 cache. Torch only.
"""

from __future__ import annotations

import functools
import math

import torch

from .. import observers
from . import scales as _scales
from .scales import Scratch, _cells
from .spec import WeightSpec

__all__ = ["applies", "int_codes"]

_MANTISSA = {torch.bfloat16: 7, torch.float16: 10}
_OBSERVERS = (observers.MINMAX, observers.MSE, observers.NVFP4_EXPANDED_MSE)  # ranges: a factor times the statistic
_PAIR = (1 << 24) + (1 << 12)  # gathers two nibbles 16 bits apart into one byte (see _slice_codes)


def applies(spec: WeightSpec, encoding: str, x: torch.Tensor, scale: torch.Tensor, global_scale) -> bool:
    """Whether :func:`int_codes` gives the reference's codes for the weight rows ``x``.

    4 bits: packed into int32 words (whole words per row), and the observer's ranges bound
    ``|t|`` inside the magic addend's binade; 8 bits: symmetric, packed or plain int8, the
    bound inside int16 where the rounded values may fall below ``q_min``. Every scale must be normal.
    """
    if spec.kind != "int" or global_scale is not None or spec.observer not in _OBSERVERS:
        return False
    if spec.strategy == "block" or x.dtype not in _MANTISSA or scale.dtype != x.dtype:
        return False
    if not x.is_contiguous() or (x.shape[1] * spec.num_bits) % 32:
        return False
    if not ((spec.num_bits == 4 and encoding == "int32_bits" and _int32_wraps(x.device.type)
             and _bound(spec.observer, spec.observer_kwargs, 4) < 2 ** (_MANTISSA[x.dtype] - 1) - 8)
            or (spec.num_bits == 8 and spec.symmetric and encoding in ("int32_bits", "plain")
                and (_one_sided(spec) or _bound(spec.observer, spec.observer_kwargs, 8) < 2 ** 15 - 1))):
        return False
    bits = scale.view(torch.int16)  # tiny <= scale < inf, from the bit patterns (a bf16 comparison costs more)
    return int(bits.amin()) >= _bits_of(torch.finfo(x.dtype).tiny, x.dtype) and int(bits.amax()) < _bits_of(math.inf, x.dtype)


@functools.cache
def _bound(observer: str, kwargs: tuple[tuple[str, float], ...], bits: int) -> float:
    """An upper bound on ``|x / scale (+ zp)|`` for normal scales from ``observer``'s ranges
    (``inf`` where a shrink factor is not positive); see the module docstring."""
    f_min = 1.0
    if observer != observers.MINMAX:
        params = observers.mse_params(kwargs)
        f_min = params.expand * min((1.0, *params.shrink))
    if f_min <= 0:
        return math.inf
    rel = 2.0 ** -8
    return ((2 ** bits - 1) / (f_min * (1 - rel) ** 6) + 2 ** (bits - 1)) * (1 + rel) ** 2


def _one_sided(spec: WeightSpec) -> bool:
    """Whether the rounded 8-bit values stay at or above ``q_min`` (symmetric min/max ranges)."""
    return spec.observer == observers.MINMAX and spec.symmetric


def _magic(dtype: torch.dtype, bits: int) -> float:
    return 1.5 * 2.0 ** _MANTISSA[dtype] + 2 ** (bits - 1)


def _int32(value: int) -> int:
    """``value`` modulo 2**32 as a signed int32."""
    value %= 1 << 32
    return value - (1 << 32) if value >= 1 << 31 else value


@functools.cache
def _int32_wraps(device_type: str) -> bool:
    """Whether torch's int32 ``add`` with ``alpha`` wraps modulo 2**32 on this device type.

    The nibble packing's products overflow by design, and C++ leaves signed overflow
    undefined, so it is measured once (a length that leaves a scalar tail after the
    vector loop) and :func:`applies` keeps the reference's ops where it does not wrap.
    """
    w = torch.arange(-37, 38, dtype=torch.int64) * 0x1F2F3F
    got = torch.add(torch.tensor(-0x12345678, dtype=torch.int32, device=device_type), w.to(torch.int32).to(device_type), alpha=_PAIR)
    want = [_int32(v * _PAIR - 0x12345678) for v in w.tolist()]
    return got.cpu().tolist() == want


@functools.cache
def _bits_of(value: float, dtype: torch.dtype) -> int:
    return int(torch.tensor(value, dtype=dtype).view(torch.int16))


def int_codes(
    x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, spec: WeightSpec, encoding: str,
    scratch: Scratch, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The main stored tensor's rows for weight rows ``x`` (where :func:`applies`).

    ``scale`` / ``zp``: per cell, shaped to broadcast over ``_cells(x)`` (``[1]`` per tensor,
    ``[rows, 1]`` per channel, ``[rows, groups, 1]`` per group). Each slice is divided and offset with the
    reference's ops (``x / scale``, then ``+ zp`` in the weight's dtype). Returns the int32
    words of compressed-tensors' ``pack_to_int32`` (``encoding == "int32_bits"``) or the
    int8 codes (``"plain"``), in ``out`` when given, else valid until the scratch's next use.
    """
    rows, cols = x.shape
    if out is None:
        shape, dtype = ((rows, cols * spec.num_bits // 32), torch.int32) if encoding == "int32_bits" else ((rows, cols), torch.int8)
        out = scratch.get("int_codes", shape, dtype, x.device)
    cells, _ = _cells(x, spec, scratch)
    zp = zp.to(x.dtype) if zp is not None else None
    dest = out.view(torch.uint8)
    runs = {}  # slice height -> its pass chain over views made once (the last slice may be shorter)
    for a, b in _scales._slices(cells):
        if b - a not in runs:
            runs[b - a] = _slice_codes(spec, encoding, (b - a, *cells.shape[1:]), x, scratch)
        per_row = scale.dim() == cells.dim()  # else one scale for the tensor
        runs[b - a](cells[a:b], scale[a:b] if per_row else scale, (zp[a:b] if per_row else zp) if zp is not None else None, dest[a:b])
    return out


def _slice_codes(spec: WeightSpec, encoding: str, shape: tuple[int, ...], x: torch.Tensor, scratch: Scratch):
    """``run(cells, scale, zp, dest)``: the codes of one slice of ``x``'s cells (``shape``) into its bytes ``dest``.

    8 bits: ``round_``, the integer clamp (on the bit patterns, or on int16 values where
    :func:`_one_sided` does not hold), the cast to int8, and for packing ``q + 128``
    (mod 256, four to an int32 word). 4 bits: the magic addend, the integer clamp, then
    two codes to a byte: each clamped bit pattern is ``base + c`` with ``c < 16``, so two
    consecutive ones as an int32 ``w = e0 + e1 * 2**16`` give ``c0 + c1 * 2**16`` after
    subtracting ``base * (1 + 2**16)``; times ``_PAIR = 2**24 + 2**12`` (modulo 2**32) that is
    ``c0 * 2**24 + c1 * 2**28`` plus ``c0 * 2**12`` (below bit 16, so no carry) and ``c1 * 2**40``
    (gone): bits 24-31 hold ``c0 | c1 << 4``, which a shift and the cast to uint8 keep.
    """
    t = scratch.get("int_t", shape, x.dtype, x.device)
    bits = t.view(torch.int16)
    q_min, q_max = spec.q_range
    # constants as tensors: a Python number is wrapped into a new tensor at every call
    if spec.num_bits == 8:
        top, q, packed = _bits_of(q_max, x.dtype), t.view(shape[0], -1), encoding == "int32_bits"
        flip = torch.tensor(0x80, dtype=torch.uint8, device=x.device)
        wide = None if _one_sided(spec) else scratch.get("int_wide", q.shape, torch.int16, x.device)

        def run(cells: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, dest: torch.Tensor) -> None:
            _scaled(cells, scale, zp, t)
            t.round_()
            if wide is None:
                bits.clamp_(max=top)  # the rounded values lie in [q_min, q_max + 1]
                dest.view(torch.int8).copy_(q)
            else:  # exact: the bound keeps the rounded values inside int16 (applies)
                wide.copy_(q).clamp_(int(q_min), int(q_max))
                dest.view(torch.int8).copy_(wide)
            if packed:
                dest.bitwise_xor_(flip)

        return run
    magic = _magic(x.dtype, 4)
    base, top = _bits_of(magic + q_min, x.dtype), _bits_of(magic + q_max, x.dtype)
    words = t.view(shape[0], -1).view(torch.int32)
    addend = torch.tensor(magic, dtype=x.dtype, device=x.device)  # exact: an integer below 2**(m + 1)
    offset = torch.tensor(_int32(-base * (1 + (1 << 16)) * _PAIR), dtype=torch.int32, device=x.device)
    byte3 = torch.tensor(24, dtype=torch.int32, device=x.device)

    def run(cells: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, dest: torch.Tensor) -> None:
        _scaled(cells, scale, zp, t)
        t.add_(addend)  # round_half_even(t) + magic, exactly
        bits.clamp_(base, top)
        torch.add(offset, words, alpha=_PAIR, out=words)  # (w - base * (1 + 2**16)) * _PAIR, modulo 2**32
        words.bitwise_right_shift_(byte3)
        dest.copy_(words)  # int32 -> uint8 keeps the low byte

    return run


def _scaled(cells: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, t: torch.Tensor) -> None:
    """The reference's scaled values into ``t``: ``cells / scale (+ zp)``, in the weight's dtype."""
    torch.div(cells, scale, out=t)
    if zp is not None:
        t += zp
