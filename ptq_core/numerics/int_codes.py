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
* **an integer clamp** (8 bits, where bf16 holds no binade of step 1 wide enough): after
  ``round_`` the rounded values lie in ``[q_min, q_max + 1]``; the bit patterns of
  non-negative floats order like their values and negative ones are negative int16, so
  ``min(bits, bits(q_max))`` is the clamp.

Both need a bound on ``|t|``, which holds for min/max ranges whose scales are normal
numbers: a scale is the cell's ``range / levels`` rounded to the dtype (relative error at
most 2**-8), so ``|x / scale| <= levels / (1 - 2**-8)**2`` and a zero point adds at most
``2**(bits - 1)``. :func:`applies` checks both; the caller keeps the reference's ops otherwise.
``tests/core/test_int_codes.py`` checks both on every 16-bit pattern. Torch only.
"""

from __future__ import annotations

import torch

from .. import observers
from .scales import Scratch
from .spec import WeightSpec

__all__ = ["applies", "int_codes"]

_MANTISSA = {torch.bfloat16: 7, torch.float16: 10}


def applies(spec: WeightSpec, encoding: str, t: torch.Tensor, scale: torch.Tensor, global_scale) -> bool:
    """Whether :func:`int_codes` gives the reference's codes for this chunk of scaled values ``t``.

    4 bits: packed into int32 words (whole words per row); 8 bits: symmetric (the integer
    clamp bounds only the top), packed or plain int8. Every scale must be normal, and come
    from the min/max observer: an MSE search's shrunk ranges leave ``|x / scale|`` bounded
    only by its smallest factor.
    """
    if spec.observer != observers.MINMAX or spec.kind != "int" or global_scale is not None:
        return False
    if t.dtype not in _MANTISSA or scale.dtype != t.dtype:
        return False
    if not t.is_contiguous() or (t.shape[1] * spec.num_bits) % 32:
        return False
    if not ((spec.num_bits == 4 and encoding == "int32_bits")
            or (spec.num_bits == 8 and spec.symmetric and encoding in ("int32_bits", "plain"))):
        return False
    return bool((scale >= torch.finfo(t.dtype).tiny).all())


def _magic(dtype: torch.dtype, bits: int) -> float:
    return 1.5 * 2.0 ** _MANTISSA[dtype] + 2 ** (bits - 1)


def _bits_of(value: float, dtype: torch.dtype) -> int:
    return int(torch.tensor(value, dtype=dtype).view(torch.int16))


def int_codes(t: torch.Tensor, spec: WeightSpec, encoding: str, scratch: Scratch) -> torch.Tensor:
    """The main stored tensor's chunk for scaled values ``t`` (zero point added, not yet clamped).

    ``t``: contiguous ``[rows, cols]`` in bf16 / fp16, overwritten. Returns the int32 words
    of compressed-tensors' ``pack_to_int32`` (``encoding == "int32_bits"``), or the int8
    codes (``"plain"``), valid until the scratch's next use.
    """
    rows, cols = t.shape
    q_min, q_max = spec.q_range
    bits16 = t.view(torch.int16)
    if spec.num_bits == 8:
        t.round_()
        bits16.clamp_(max=_bits_of(q_max, t.dtype))  # the rounded values lie in [q_min, q_max + 1]
        q = scratch.get("q", (rows, cols), torch.int8, t.device).copy_(t)
        if encoding == "plain":
            return q
        return q.view(torch.uint8).bitwise_xor_(0x80).view(torch.int32)  # q + 128 (mod 256), 4 per word
    magic = _magic(t.dtype, 4)
    t.add_(magic)  # round_half_even(t) + magic, exactly
    base = _bits_of(magic + q_min, t.dtype)
    bits16.clamp_(base, _bits_of(magic + q_max, t.dtype))
    return _nibble_pairs(bits16, base, scratch).view(torch.int32)


def _nibble_pairs(bits16: torch.Tensor, base: int, scratch: Scratch) -> torch.Tensor:
    """Bytes ``a | c << 4`` from consecutive bit patterns ``base + a``, ``base + c`` (``a, c < 16``).

    As one int32 ``w = e0 | e1 << 16``, ``w ^ (w >> 12)`` has ``(a | c << 4) ^ K`` in its low
    byte with ``K = (base & 0xF0) ^ (base >> 12)`` (``base``'s low nibble is zero, and
    ``e0 >> 12 < 16`` carries nothing into ``c << 4``).
    """
    rows, cols = bits16.shape
    words = bits16.view(torch.int32)
    mixed = scratch.get("nib_mix", tuple(words.shape), torch.int32, words.device)
    torch.bitwise_right_shift(words, 12, out=mixed)
    mixed.bitwise_xor_(words)
    out = scratch.get("pack_nib", (rows, cols // 2), torch.uint8, words.device)
    out.copy_(mixed.view(torch.uint8).view(rows, cols // 2, 4)[..., 0])
    return out.bitwise_xor_((base & 0xF0) ^ (base >> 12))
