"""Float codes (FP8, FP4, FP6) of a row chunk in L2-sized row slices, byte-identical to the reference's.

(:func:`slice_codes` also runs the integer codes where ``int_codes``' bit-pattern bounds
do not hold: float32 weights, 2-7 bits, subnormal scales.)

The reference quantizes to a float grid with ``x / scale`` (or, for MX, ``x * (1 / scale)``
where that is exact: ``numerics._exact_reciprocal``; NVFP4 in float32, its scale divided
by the global scale), plus the zero point and a clamp, then torch's cast to
``float8_e4m3fn`` (FP8) or the FP4 / FP6 codes and their packing (``scales._float_codes``,
``_pack_nibbles``, ``_pack_fp6``). The same ops run here, but the whole chain works on row
slices of ``scales._SLICE_ELEMS`` 16-bit elements (half as many float32 ones), so the
quotient and the codes are written and read back in the core's L2 cache instead of
streaming a multi-megabyte chunk through L3 at every pass, and the codes go straight into
the output rows (about 1.6x for a 2048 x 2048 bf16 FP8 weight on one thread, 1.3x for
NVFP4 / MXFP4). Slicing the whole chunk instead would repeat the per-chunk qparams ops.

MX scales are powers of two, and for bf16 weights the product by ``2**k`` (``k >= 0``) is
an integer add of ``k << 7`` to the bit patterns (:func:`exponent_steps`), a quarter of a
bf16 multiply's cost, with no reciprocal to compute and check. It gives the product's bits
for every normal ``x``: the product stays normal (``k >= 0``) and finite (``|x| / scale``
is below ``2**9`` for min/max ranges, ``2**9 / f`` for a range an MSE search shrank by ``f``:
far from bf16's overflow; such ranges keep the clamp, ``numerics._clamp_is_identity``). For ``x = +-0`` or a subnormal ``x`` it
gives another value, but one below ``2**(k - 126)``: with ``k <= 116`` that is at most
``2**-10``, half the smallest FP8 subnormal, so the cast gives the same signed zero the
product gives. Other ``k``, and FP4 / FP6 (not proven here), keep the multiply.
``tests/core/test_float_codes.py`` checks both claims on every bf16 pattern.
Torch only.
"""

from __future__ import annotations

from typing import Callable

import torch

from . import scales as _scales
from .spec import WeightSpec

__all__ = ["exponent_steps", "slice_codes"]

_ONE_BF16 = 0x3F80  # bits of 1.0 in bf16: the exponent field of 2**k is 127 + k
_MAX_STEP = 116  # the largest k whose zero / subnormal products still cast to a signed zero


def slice_codes(
    cells: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, clamp: bool, spec: WeightSpec,
    rows: int, cols: int, scratch: _scales.Scratch, encode: Callable[[torch.Tensor, int, int], object],
    *, recip: torch.Tensor | None = None, steps: torch.Tensor | None = None,
) -> None:
    """Quantize a ``rows x cols`` chunk's ``cells`` (``scales._cells``) slice by slice.

    ``scale`` / ``zp``: per cell, shaped to broadcast over ``cells`` (block: ``[.., 1, .., 1]``,
    group: ``[.., .., 1]``, one for the tensor: ``[1]``); MX: ``steps``, the scales'
    :func:`exponent_steps` (FP8 only), added to the bits, or else ``recip``, their exact
    reciprocals, multiplied instead of dividing; ``clamp``: whether the clamp to the
    spec's range may change a byte (``numerics._clamp_is_identity``). The scaled values,
    in the reference's dtype (``promote_types(weight, scale)``), go to
    ``encode(values, first, end)`` as weight rows ``first:end`` (valid during the call),
    which writes their codes (FP8: the cast the clamp probe checked).
    """
    work_dtype = torch.promote_types(cells.dtype, scale.dtype)
    elems = _scales._SLICE_ELEMS * 2 // work_dtype.itemsize  # the same bytes for float32 values
    per_row = scale.dim() == cells.dim()  # else one scale for the tensor
    height = spec.block[0] if spec.strategy == "block" else 1  # weight rows per first-dim index
    for a, b in _scales._slices(cells, elems=elems):
        part = cells[a:b]
        s, r, z = ((t[a:b] if per_row and t is not None else t) for t in (scale, recip, zp))  # the slice's
        tmp = scratch.get("float_t", tuple(part.shape), work_dtype, cells.device)
        if steps is not None:
            torch.add(part.view(torch.int16), steps[a:b], out=tmp.view(torch.int16))
        elif recip is not None:  # torch broadcasts a product over 32-element groups faster than a quotient
            torch.mul(part, r, out=tmp)
        elif part.dtype != work_dtype:  # widen first: torch's mixed-dtype broadcast is several times slower
            tmp.copy_(part).div_(s)
        else:
            torch.div(part, s, out=tmp)
        if zp is not None:
            tmp += z.to(cells.dtype)
        if clamp:
            tmp.clamp_(*spec.q_range)
        first, end = a * height, min(rows, b * height)
        # back to rows x cols (blocks: dropping the padding)
        flat = tmp.view(tmp.shape[0] * tmp.shape[1], -1) if spec.strategy == "block" else tmp.view(end - first, -1)
        encode(flat[: end - first, :cols], first, end)


def exponent_steps(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor | None:
    """``k << 7`` per cell where every MX scale is ``2**-k`` with ``0 <= k <= 116`` (bf16), else None.

    A bf16 ``2**-k`` has the bits ``(127 - k) << 7`` (no mantissa bits), so ``k << 7`` is
    the bits of 1.0 minus the scale's; small integer reductions check the mantissa and
    the range. Such a scale is a normal number, and ``x * 2**k`` is the reference's
    ``x / scale`` exactly where it is normal (see the module's docstring).
    """
    if x.dtype != torch.bfloat16 or scale.dtype != torch.bfloat16:
        return None
    bits = scale.view(torch.int16)
    steps = _ONE_BF16 - bits
    if int(steps.amin()) < 0 or int(steps.amax()) > _MAX_STEP << 7 or bool(bits.bitwise_and(0x7F).any()):
        return None
    return steps
