"""Quantization kernels, byte-identical to compressed-tensors' reference path.

The reference (llm-compressor's ``model_free_ptq``) wraps every weight in an
``nn.Linear``, runs a min/max observer, ``calculate_qparams`` and
``compress_module``. We compute the same tensors directly:

* scales are derived with the *same* sequence of small tensor ops, in the same
  dtypes (bf16 for a bf16 model: the reference divides in the weight's dtype on
  CPU; NVFP4's global-scale path promotes to float32);
* the elementwise quantization runs in row chunks (bounded temporaries, cache
  friendly) with the same operations the reference applies elementwise, so the
  results are identical bit for bit; the FP4 rounding and the int32 packing are
  vectorised equivalents of the reference's masked assignments and scatter-adds.

Every equality claim here is checked tensor by tensor in ``tests/test_numerics.py``
against compressed-tensors itself. The same ops run on CUDA, so a GPU gives the
CPU's bytes (the reference's Triton kernels divide in float32 instead; we follow
the CPU path everywhere so that output never depends on the device).

This module imports torch only.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch

from . import observers
from .errors import (
    CheckpointError,
    NonFiniteScaleError,
    NonFiniteWeightError,
    SchemeNotSupportedError,
    TensorShapeError,
)

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT_TENSORS",
    "RowSink",
    "Scratch",
    "StoredTensor",
    "WeightSpec",
    "WeightStats",
    "dequantize_fp8_block",
    "global_scale_from_absmax",
    "global_scale_from_stats",
    "observe_weight",
    "output_layout",
    "quantize_weight",
    "stored_tensors",
    "tensor_absmax",
]

_FP8 = torch.float8_e4m3fn
_FP8_MAX = float(torch.finfo(_FP8).max)  # 448
_FP4_MAX = 6.0
_FP6_MAX = 7.5
_MX_ELEM_OFFSET = {4: 2, 6: 2, 8: 8}  # floor(log2(element max)): FP4 6 -> 2, FP6 7.5 -> 2, FP8 448 -> 8
# mantissa bits of the element type: MX scales round the group max up a power of two past them
_MX_ELEM_MANTISSA = {4: 1, 6: 3, 8: 1}  # compressed-tensors rounds FP8 with FP4's mantissa too
_CHUNK_ELEMS = 1 << 22  # ~4M elements per elementwise step


@dataclass(frozen=True)
class WeightSpec:
    """What the kernels need to know about a scheme's weight arguments.

    Built by ``schemes.weight_spec`` from compressed-tensors' ``QuantizationArgs``
    so that this module stays free of compressed-tensors imports.
    """

    kind: str  # "int" | "float"
    num_bits: int
    strategy: str  # tensor | channel | group | tensor_group | block
    symmetric: bool
    fmt: str  # compressed-tensors format name
    group_size: int | None = None
    block: tuple[int, int] | None = None
    scale_dtype: torch.dtype | None = None  # fp8 for NVFP4, uint8 for MX
    observer: str = observers.MINMAX  # canonical name (observers.resolve_observer)
    observer_kwargs: tuple[tuple[str, float], ...] = ()  # complete, sorted, hashable

    @property
    def is_mx(self) -> bool:
        return (
            self.kind == "float"
            and self.num_bits in (4, 6, 8)
            and self.group_size == 32
            and self.scale_dtype == torch.uint8
        )

    @property
    def zp_dtype(self) -> torch.dtype:
        """The zero points' dtype (``QuantizationArgs.zp_dtype``'s default): FP8 for float weights."""
        return _FP8 if self.kind == "float" else torch.int8

    @property
    def q_range(self) -> tuple[float, float]:
        if self.kind == "int":
            return -(2.0 ** (self.num_bits - 1)), 2.0 ** (self.num_bits - 1) - 1
        top = {8: _FP8_MAX, 6: _FP6_MAX}.get(self.num_bits, _FP4_MAX)
        return -top, top


# --------------------------------------------------------------------------- layout
def _scale_shape(spec: WeightSpec, rows: int, cols: int) -> tuple[int, ...]:
    if spec.strategy == "tensor":
        return (1,)
    if spec.strategy == "channel":
        return (rows, 1)
    if spec.strategy in ("group", "tensor_group"):
        return (rows, math.ceil(cols / spec.group_size))
    bh, bw = spec.block
    return (math.ceil(rows / bh), math.ceil(cols / bw))


def _param_dtype(dtype: torch.dtype) -> torch.dtype:
    # initialize_qparams keeps scales in the weight's dtype unless that is not a float
    return dtype if dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) else torch.float16


@dataclass(frozen=True)
class StoredTensor:
    """One tensor a compressed weight is stored as: a row of :data:`FORMAT_TENSORS`.

    Attributes:
        name: local name (``weight_packed``, ``weight_scale``...), prefixed by the module.
        encoding: how the kernel's value becomes the stored bytes. Main tensor:
            ``plain`` (the quantized values in ``dtype``), ``fp4_nibbles`` (two E2M1
            codes a byte, low nibble first), ``fp6_bytes`` (four E2M3 codes in three
            bytes), ``int32_bits`` (dense little-endian bit packing). Others: ``param`` (the scale as the module's parameter,
            in the weight's dtype), ``cast`` (the scale cast to ``dtype``), ``e8m0``
            (MX power-of-two exponents), ``zero_point`` (zero points as they are:
            int8, or float8_e4m3fn for FP8 weights),
            ``int32_rows`` (zero points bit-packed along the rows), ``global``
            (NVFP4's float32 global scale), ``shape`` (the dense weight shape).
        dtype: ``dtype(spec, weight_dtype)``, the stored dtype.
        shape: ``shape(spec, rows, cols)``, the stored shape.
        present: ``present(spec)``; e.g. zero points only for asymmetric schemes.
    """

    name: str
    encoding: str
    dtype: Callable[[WeightSpec, torch.dtype], torch.dtype]
    shape: Callable[[WeightSpec, int, int], tuple[int, ...]]
    present: Callable[[WeightSpec], bool] = lambda spec: True

    @property
    def is_main(self) -> bool:
        return self.encoding in _MAIN_ENCODINGS


_MAIN_ENCODINGS = ("plain", "fp4_nibbles", "fp6_bytes", "int32_bits")


def _asymmetric(spec: WeightSpec) -> bool:
    return not spec.symmetric


def _packed_zero_point(spec: WeightSpec) -> bool:
    # pack_quantized packs zero points along the rows for group / channel only
    return not spec.symmetric and spec.strategy in ("group", "channel")


def _plain_zero_point(spec: WeightSpec) -> bool:
    return not spec.symmetric and spec.strategy not in ("group", "channel")


def _scale_dtype(default: torch.dtype) -> Callable[[WeightSpec, torch.dtype], torch.dtype]:
    return lambda spec, dtype: spec.scale_dtype or default


_FP4_PACKED = StoredTensor("weight_packed", "fp4_nibbles", lambda s, d: torch.uint8, lambda s, r, c: (r, c // 2))
_SCALE_PARAM = StoredTensor("weight_scale", "param", lambda s, d: _param_dtype(d), _scale_shape)
_SCALE_E8M0 = StoredTensor("weight_scale", "e8m0", _scale_dtype(torch.uint8), _scale_shape)
_ZERO_POINT = StoredTensor("weight_zero_point", "zero_point", lambda s, d: s.zp_dtype, _scale_shape, _asymmetric)

FORMAT_TENSORS: dict[str, tuple[StoredTensor, ...]] = {
    "nvfp4-pack-quantized": (
        _FP4_PACKED,
        StoredTensor("weight_scale", "cast", _scale_dtype(_FP8), _scale_shape),
        StoredTensor("weight_global_scale", "global", lambda s, d: torch.float32, lambda s, r, c: (1,)),
    ),
    "mxfp4-pack-quantized": (_FP4_PACKED, _SCALE_E8M0),
    "mxfp6-pack-quantized": (
        StoredTensor("weight_packed", "fp6_bytes", lambda s, d: torch.uint8, lambda s, r, c: (r, c * 3 // 4)),
        _SCALE_E8M0,
    ),
    "pack-quantized": (
        StoredTensor(
            "weight_packed", "int32_bits", lambda s, d: torch.int32,
            lambda s, r, c: (r, math.ceil(c * s.num_bits / 32)),
        ),
        _SCALE_PARAM,
        StoredTensor("weight_shape", "shape", lambda s, d: torch.int64, lambda s, r, c: (2,)),
        StoredTensor(
            "weight_zero_point", "int32_rows", lambda s, d: torch.int32,
            lambda s, r, c: (math.ceil(_scale_shape(s, r, c)[0] * s.num_bits / 32), _scale_shape(s, r, c)[1]),
            _packed_zero_point,
        ),
        StoredTensor("weight_zero_point", "zero_point", lambda s, d: s.zp_dtype, _scale_shape, _plain_zero_point),
    ),
    "float-quantized": (
        StoredTensor("weight", "plain", lambda s, d: _FP8, lambda s, r, c: (r, c)), _SCALE_PARAM, _ZERO_POINT,
    ),
    "int-quantized": (
        StoredTensor("weight", "plain", lambda s, d: torch.int8, lambda s, r, c: (r, c)), _SCALE_PARAM, _ZERO_POINT,
    ),
    "naive-quantized": (
        StoredTensor("weight", "plain", lambda s, d: _FP8 if s.kind == "float" else torch.int8, lambda s, r, c: (r, c)),
        _SCALE_PARAM,
        _ZERO_POINT,
    ),
    "mxfp8-quantized": (
        StoredTensor("weight", "plain", lambda s, d: _FP8, lambda s, r, c: (r, c)),
        StoredTensor("weight_scale", "e8m0", lambda s, d: torch.uint8, _scale_shape),
        _ZERO_POINT,
    ),
}
"""Format -> the tensors one compressed weight is stored as, in header order.

The single description of every compressor's output: the planner sizes shards
from it (:func:`output_layout`) and :func:`quantize_weight` encodes from it.
"""


def stored_tensors(spec: WeightSpec) -> tuple[StoredTensor, ...]:
    """The rows of :data:`FORMAT_TENSORS` that a weight with this spec is stored as."""
    try:
        rows = FORMAT_TENSORS[spec.fmt]
    except KeyError:
        raise SchemeNotSupportedError(
            f"compressed-tensors format {spec.fmt!r} has no kernel here; supported formats: "
            f"{', '.join(FORMAT_TENSORS)}."
        ) from None
    return tuple(row for row in rows if row.present(spec))


def _main_tensor(spec: WeightSpec) -> StoredTensor:
    return next(row for row in stored_tensors(spec) if row.is_main)


def output_layout(spec: WeightSpec, shape: tuple[int, int], dtype: torch.dtype) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """Local names, dtypes and shapes of the tensors a weight compresses into.

    Used by the planner to size shards and write safetensors headers before
    any tensor is computed.
    """
    rows, cols = shape
    return [(t.name, t.dtype(spec, dtype), tuple(t.shape(spec, rows, cols))) for t in stored_tensors(spec)]


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


def _absmax(cells: torch.Tensor, dims: tuple[int, ...], keepdim: bool, scratch: Scratch) -> torch.Tensor:
    """max |x| over ``dims``, exactly, via integer maxima of the sign-cleared bit patterns.

    For non-negative IEEE floats the bit patterns order like the values, so
    clearing the sign bit and taking an integer max gives the float max |x|
    (NaN and Inf included: they sort above every finite value). torch's integer
    reductions are several times faster than its bf16/f16 ones.
    """
    int_dtype, mask = _SIGNLESS[cells.dtype]
    bits = scratch.get("absbits", tuple(cells.shape), int_dtype, cells.device)
    torch.bitwise_and(cells.view(int_dtype), mask, out=bits)
    return bits.amax(dim=dims, keepdim=keepdim).view(cells.dtype)


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
        zero_points = torch.clamp(zero_points, q_min, q_max)
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


def _quantize_rows(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, spec: WeightSpec,
                   global_scale: torch.Tensor | None, scratch: Scratch) -> torch.Tensor:
    """Quantize a row chunk with its scales; returns the chunk of the main stored tensor.

    Same elementwise operations as the reference's ``_quantize``: divide (in the
    weight's dtype, or float32 once a global scale is involved), add the zero
    point, clamp, round to the target grid.
    """
    rows, cols = x.shape
    cells, _ = _cells(x, spec, scratch)
    if spec.strategy == "block":
        scale = scale[:, None, :, None]
        zp = zp[:, None, :, None] if zp is not None else None
    elif spec.strategy in ("group", "tensor_group"):
        scale = scale[..., None]
        zp = zp[..., None] if zp is not None else None
    if global_scale is not None:
        scale = scale / global_scale  # bf16 / f32 -> f32, as the reference
    work_dtype = torch.promote_types(x.dtype, scale.dtype)
    tmp = torch.div(cells, scale, out=scratch.get("tmp", tuple(cells.shape), work_dtype, x.device))
    if zp is not None:
        tmp += zp.to(x.dtype)
    if not _clamp_is_identity(spec, scale, global_scale, zp, tmp):
        q_min, q_max = spec.q_range
        tmp.clamp_(q_min, q_max)
    if spec.strategy == "block":  # back to rows x cols, dropping the padding
        tmp = tmp.view(tmp.shape[0] * tmp.shape[1], -1)[:rows, :cols]
    else:
        tmp = tmp.view(rows, cols)
    encoding = _main_tensor(spec).encoding
    if encoding == "fp4_nibbles":
        codes = _float_codes(tmp, scratch.get("codes", (rows, cols), torch.uint8, x.device), scratch, 4)
        return _pack_nibbles(codes, scratch.get("packed", (rows, cols // 2), torch.uint8, x.device))
    if encoding == "fp6_bytes":
        codes = _float_codes(tmp, scratch.get("codes", (rows, cols), torch.uint8, x.device), scratch, 6)
        return _pack_fp6(codes, scratch.get("packed", (rows, cols * 3 // 4), torch.uint8, x.device))
    if spec.kind == "int":
        tmp.round_()
        q = scratch.get("q", (rows, cols), torch.int8, x.device).copy_(tmp)
        return _pack_int32(q, spec.num_bits, scratch) if encoding == "int32_bits" else q
    return _cast_to_fp8(tmp, scratch.get("q", (rows, cols), _FP8, x.device))


def _clamp_is_identity(spec: WeightSpec, scale: torch.Tensor, global_scale, zp, scaled: torch.Tensor) -> bool:
    """True when clamping to +-448 before the FP8 cast provably changes no output byte.

    For symmetric FP8 with ``scale = round(amax / 448)`` in a float dtype whose
    scales are all normal numbers, the rounding error of the scale is at most
    2^-8 relative, so ``|x / scale| <= 448 / (1 - 2^-8) < 450``, which rounds
    (again in the weight dtype) to at most 450. A cast that rounds anything
    below 464 to at most 448 then gives exactly what clamp-then-cast gives;
    :func:`_fp8_cast_saturates` checks that this torch's cast does. MX scales
    are powers of two with ``amax / scale <= 448`` by construction. Subnormal
    scales (weights near 1e-38) lose that bound, so they keep the clamp.
    """
    if spec.kind != "float" or spec.num_bits != 8 or global_scale is not None or zp is not None:
        return False
    if not scale.dtype.is_floating_point:
        return False
    if not bool((scale >= torch.finfo(scale.dtype).tiny).all()):
        return False
    return _fp8_cast_saturates(scaled.dtype, scaled.device)


def _cast_to_fp8(src: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """torch's float -> float8_e4m3fn cast (round to nearest even), the reference's ``.to(fp8)``.

    The one place the kernels cast to FP8, so the probe below checks the very
    operation that the clamp skip relies on.
    """
    return out.copy_(src)


_FP8_CAST_PROBES: dict[tuple[torch.dtype, str], bool] = {}


def _fp8_cast_saturates(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether this torch's FP8 cast from ``dtype`` on this device type equals clamp-then-cast.

    pyproject allows torch >= 2.10, and whether a given build saturates or
    produces NaN above 448 is not documented; so it is measured once per
    (dtype, device type) and the clamp is kept wherever it is not proven redundant.
    """
    key = (dtype, device.type)
    found = _FP8_CAST_PROBES.get(key)
    if found is None:
        found = _FP8_CAST_PROBES[key] = _probe_fp8_cast(dtype, device)
        if not found:
            logger.info(
                "torch %s's %s -> float8_e4m3fn cast on %s does not saturate at 448; keeping the clamp",
                torch.__version__, dtype, device.type,
            )
    return found


def _probe_fp8_cast(dtype: torch.dtype, device: torch.device) -> bool:
    """Cast every boundary value (448..464, both signs) directly and clamped; compare the bytes."""
    values = _fp8_boundary_values(dtype).to(device)
    values = torch.cat([values, -values])
    direct = _cast_to_fp8(values, torch.empty(values.shape, dtype=_FP8, device=device))
    clamped = _cast_to_fp8(values.clamp(-_FP8_MAX, _FP8_MAX), torch.empty(values.shape, dtype=_FP8, device=device))
    return torch.equal(direct.view(torch.uint8), clamped.view(torch.uint8))


def _fp8_boundary_values(dtype: torch.dtype) -> torch.Tensor:
    """Every ``dtype`` value in [448, 464] (float64: every float32 one and its float64 successor)."""
    if dtype == torch.float64:
        f32 = _fp8_boundary_values(torch.float32).to(torch.float64)
        above = torch.nextafter(f32, torch.tensor(math.inf, dtype=torch.float64))
        return torch.cat([f32, above[above <= 464.0]])
    int_dtype = torch.int32 if dtype == torch.float32 else torch.int16
    lo, hi = (int(torch.tensor(v, dtype=dtype).view(int_dtype)) for v in (_FP8_MAX, 464.0))
    return torch.arange(lo, hi + 1, dtype=torch.int64).to(int_dtype).view(dtype)


# --------------------------------------------------------------------------- observers
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


def observe_weight(weight: torch.Tensor, spec: WeightSpec, scratch: Scratch | None = None) -> WeightStats:
    """The spec's observer run on one weight: per-cell statistics for :func:`quantize_weight`.

    Min/max observers cost one pass over the weight; the MSE observers run the
    peer's grid search (see :mod:`ptq_core.observers`), on the CPU whatever the
    weight's device, because their choices hang on the CPU's summation order.

    Raises:
        NonFiniteWeightError: the weight holds NaN or Inf.
        NonFiniteScaleError: the expanded range of an MSE search overflows the dtype.
        TensorShapeError: the weight has no elements.
    """
    scratch = scratch or Scratch()
    rows, cols = weight.shape
    if weight.numel() == 0:
        raise TensorShapeError(f"its shape {[rows, cols]} holds no values to quantize; add its module to ignore.")
    if spec.observer != observers.MINMAX:
        if weight.device.type == "cpu":
            return _mse_stats(weight, spec, scratch)
        # the per-cell error sums must round as torch's CPU reductions do (CUDA sums in
        # another order), so the search runs on a CPU copy; the quantization stays on the device
        found = _mse_stats(weight.cpu(), spec, Scratch())
        return WeightStats(found.lo.to(weight.device), found.hi.to(weight.device) if found.hi is not None else None)
    if spec.strategy == "tensor":
        return WeightStats(*_finite(*_stats(weight, spec, scratch)))
    multiple = spec.block[0] if spec.strategy == "block" else 1
    parts = [_finite(*_stats(weight[a:b], spec, scratch)) for a, b in _row_chunks(rows, cols, multiple)]
    return WeightStats(torch.cat([lo for lo, _ in parts]), torch.cat([hi for _, hi in parts]) if parts[0][1] is not None else None)


def global_scale_from_stats(stats: Sequence[WeightStats]) -> torch.Tensor:
    """NVFP4 global scale of a fused group from its members' observed statistics.

    The peer's FusionHandler builds it from every member's observer statistics,
    so with an MSE observer it reflects the searched ranges, not the raw max |w|.
    """
    return global_scale_from_absmax(torch.stack([s.absmax() for s in stats]).amax())


def _finite(lo: torch.Tensor, hi: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not bool(torch.isfinite(lo).all()) or (hi is not None and not bool(torch.isfinite(hi).all())):
        raise NonFiniteWeightError("the weight holds NaN or Inf values")
    return lo, hi


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
                err = _errors(weight[c.first : c.end], c.lo, c.hi, search, params.norm, factors, scratch)
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

    The table path wants big chunks (more repeated values), the direct one cache-sized
    ones. A chunk with a table keeps its running best in the table's cell order.
    """
    rows, cols = weight.shape
    if spec.strategy == "tensor":  # one cell: the peer's single whole-tensor sum, one factor at a time
        spans = [(0, rows)]
    else:
        multiple = spec.block[0] if spec.strategy == "block" else 1
        spans = _row_chunks(rows, cols, multiple, _CHUNK_ELEMS if _tables_apply(weight, spec) else _CHUNK_ELEMS // 16)
    chunks = []
    for a, b in spans:
        lo, hi = _finite(*_stats(weight[a:b], spec, scratch))
        lo, hi = _expanded(lo, params.expand), (_expanded(hi, params.expand) if hi is not None else None)
        table = _pair_table(weight[a:b], lo, hi, search, scratch) if params.shrink else None
        best_err, best_step = observers.initial_best(lo if table is None else lo.reshape(-1))
        chunks.append(_SearchChunk(a, b, lo, hi, best_err, best_step, table))
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


def _errors(x, lo, hi, spec: WeightSpec, norm: float, factors: torch.Tensor, scratch: Scratch) -> torch.Tensor:
    """``[factors, *cells]``: each shrunk range's error, as the peer's ``_calculate_error``.

    Candidate statistics and scales are computed for the whole row chunk; the
    errors on row blocks small enough that a block of candidates stays in cache.
    """
    rows, cols = x.shape
    k = factors.shape[0]
    cand_lo = observers.candidates(lo, factors)
    cand_hi = observers.candidates(hi, factors) if hi is not None else None
    scales, zps = _qparams(cand_lo, cand_hi, spec, None)
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
_TABLE_MAX_WIDTH = 512  # widest cell whose sums the table path certifies (error bound ~ width)


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
       non-negative numbers lie within ``width * 2**-24`` (relative) of the exact sum,
       so where that whole interval rounds to one value of the weight's dtype, that
       value is the peer's. The rest (about 1%, and any non-finite sum) are summed
       again on the peer's layout with torch's reduction.
    """
    k, groups = factors.shape[0], table.lo.numel()
    cand_hi = observers.candidates(table.hi, factors) if table.hi is not None else None
    scales, zps = _qparams(observers.candidates(table.lo, factors), cand_hi, spec, None)  # [k, groups]
    uniq, which = torch.unique(_qparams_key(scales, zps), return_inverse=True)
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


def _sum_margin(width: int) -> float:
    """Relative distance within which torch's float32 sum of ``width`` non-negative numbers
    lies from any other float32 sum of them: ``2 (width - 1) 2**-24`` (each is within
    ``(width - 1) 2**-24`` of the exact sum), plus slack for the two products that apply it."""
    return (2 * width + 4) * 2.0**-24


def _certified(approx, table: _PairTable, scales, zps, spec: WeightSpec, norm: float, scratch: Scratch) -> torch.Tensor:
    """The sums in the weight's dtype: ``approx`` rounded where the rounding is certain, else recomputed.

    ``approx``: ``[cells, factors]`` float32 sums, cells in the table's order."""
    width, dtype, groups = table.cells.shape[1], table.cells.dtype, table.lo.numel()
    margin = _sum_margin(width)
    low = (approx * (1 - margin)).to(dtype)
    high = (approx * (1 + margin)).to(dtype)
    unsure = (low.view(torch.int16) != high.view(torch.int16)) | ~torch.isfinite(approx)
    row, col = torch.nonzero(unsure, as_tuple=True)
    if row.numel():
        cell = table.order[row]
        flat = col * groups + table.group[cell]
        z = zps.reshape(-1)[flat].view(-1, 1) if zps is not None else None
        exact = _pointwise_errors(table.cells.index_select(0, cell), scales.reshape(-1)[flat].view(-1, 1), z, spec, norm, scratch)
        low[row, col] = exact.sum(dim=-1)
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


# --------------------------------------------------------------------------- FP8-block sources
_FP8_SOURCE_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def dequantize_fp8_block(
    weight_fp8: torch.Tensor,
    scale_inv: torch.Tensor,
    dtype: torch.dtype,
    *,
    block: tuple[int, int] = (128, 128),
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """A DeepSeek-style FP8-block weight back in ``dtype``: ``w * scale_inv`` per block.

    Byte-identical to compressed-tensors' ``FP8BlockDequantizer``: both factors
    are widened to float32, multiplied, and the product is rounded to ``dtype``
    (the reference pads ragged edges with zeros, which change no kept value).

    Args:
        weight_fp8: ``[N, K]`` float8 weight (``float8_e4m3fn`` or ``float8_e5m2``).
        scale_inv: ``[ceil(N / bh), ceil(K / bw)]`` per-block multipliers (any float dtype).
        dtype: the dequantized dtype (the checkpoint's ``torch_dtype``, usually bf16).
        block: ``weight_block_size`` from the source's ``quantization_config``.
        out: a ``[N, K]`` tensor of ``dtype`` to write into (a worker's scratch).

    Returns:
        the ``[N, K]`` weight in ``dtype`` (``out`` when given).

    Raises:
        TensorShapeError: ``scale_inv``'s shape does not match the weight and block.
        CheckpointError: the weight is not float8.
    """
    if weight_fp8.dtype not in _FP8_SOURCE_DTYPES:
        raise CheckpointError(f"its dtype is {weight_fp8.dtype}, not float8; it is not an FP8-block weight.")
    rows, cols = weight_fp8.shape
    bh, bw = block
    expected = (math.ceil(rows / bh), math.ceil(cols / bw))
    if tuple(scale_inv.shape) != expected:
        raise TensorShapeError(
            f"its weight_scale_inv has shape {list(scale_inv.shape)}, but a {[rows, cols]} weight in "
            f"{bh}x{bw} blocks needs {list(expected)}; check weight_block_size in config.json."
        )
    out = torch.empty((rows, cols), dtype=dtype, device=weight_fp8.device) if out is None else out
    full = cols // bw * bw  # columns in whole blocks; the rest share the last block's scale
    # Each chunk's rows look up their own block row of scales (at most the chunk's size, in
    # float32) and the scale is broadcast over each block's columns: nothing the size of a
    # block row (bh x K) is made, so a huge weight_block_size costs no memory. The products
    # are the reference's (float32 x float32, rounded once to ``dtype``): the same bytes.
    for a, b in _row_chunks(rows, cols):
        rows_of = torch.arange(a, b, device=scale_inv.device) // bh
        scale = scale_inv.index_select(0, rows_of).to(torch.float32)
        wide = weight_fp8[a:b].to(torch.float32)
        if full:
            wide[:, :full].view(b - a, full // bw, bw).mul_(scale[:, : full // bw, None])
        if full < cols:
            wide[:, full:].mul_(scale[:, -1:])
        out[a:b].copy_(wide)
    return out


RowSink = Callable[[str, int, torch.Tensor], None]
"""``sink(local_name, first_row, rows)``: receives the main stored tensor chunk by chunk."""


def quantize_weight(
    weight: torch.Tensor,
    spec: WeightSpec,
    *,
    global_scale: torch.Tensor | None = None,
    stats: WeightStats | None = None,
    sink: RowSink | None = None,
    scratch: Scratch | None = None,
) -> dict[str, torch.Tensor]:
    """Compress one 2-D weight; returns local names -> tensors (on the weight's device).

    Args:
        weight: ``[N, K]`` contiguous float weight (bf16/fp16/fp32/fp64).
        spec: the scheme's weight arguments.
        global_scale: NVFP4 only: the fused group's ``global_scale_from_stats``
            (computed from this weight alone when omitted).
        stats: this weight's ``observe_weight`` (computed when omitted; a fused
            group observes its members first, for the global scale).
        sink: when given, the main stored tensor (``weight`` / ``weight_packed``)
            is handed over in row chunks (each valid only during the call) and
            left out of the result, so it never exists whole in memory.
        scratch: reusable buffers (one per thread).

    Raises:
        NonFiniteWeightError: the weight holds NaN or Inf.
        NonFiniteScaleError: the weight is finite but a scale would not be (e.g.
            ``max - min`` of an asymmetric cell overflows the weight's dtype).
        TensorShapeError: the weight has no elements.
        Both messages start with "its ...": callers prefix the tensor's name.
    """
    scratch = scratch or Scratch()
    rows, cols = weight.shape
    if weight.numel() == 0:
        raise TensorShapeError(f"its shape {[rows, cols]} holds no values to quantize; add its module to ignore.")
    main_row = _main_tensor(spec)
    main = main_row.name
    if stats is None and (spec.observer != observers.MINMAX or spec.strategy == "tensor"):
        stats = observe_weight(weight, spec, scratch)  # min/max otherwise: per chunk, in cache
    if spec.strategy == "tensor_group" and global_scale is None:
        absmax = stats.absmax() if stats is not None else tensor_absmax(weight, scratch)
        global_scale = global_scale_from_absmax(absmax)
    whole = None
    if spec.strategy == "tensor":  # one scale from the whole tensor, before any chunk
        whole = _checked_qparams(stats.lo, stats.hi, spec, global_scale)
    full = None
    if sink is None:
        main_shape = main_row.shape(spec, rows, cols)
        full = torch.empty(main_shape, dtype=main_row.dtype(spec, weight.dtype), device=weight.device)
    pdt = _param_dtype(weight.dtype)
    scale_parts, zp_parts = [], []
    multiple = spec.block[0] if spec.strategy == "block" else 1
    for a, b in _row_chunks(rows, cols, multiple):
        x = weight[a:b]
        if whole is None:
            cells = stats.rows(spec, a, b) if stats is not None else _stats(x, spec, scratch)
            scales, zps = _checked_qparams(*cells, spec, global_scale)
            # the module's scale parameter has the weight's dtype: copy_ casts into it
            scales = scales.to(pdt)
            scale_parts.append(scales)
            zp_parts.append(zps)
        else:
            scales, zps = whole[0].to(pdt), whole[1]
        out = _quantize_rows(x, scales, zps, spec, global_scale, scratch)
        if sink is None:
            full[a:b] = out
        else:
            sink(main, a, out)
    if whole is None:
        param_scale = torch.cat(scale_parts)
        zero_points = torch.cat(zp_parts) if zp_parts[0] is not None else None
    else:
        param_scale, zero_points = whole[0].to(pdt), whole[1]
    result = _small_outputs(param_scale, zero_points, spec, (rows, cols), global_scale)
    if full is not None:
        result = {main: full, **result}
    return result


def _checked_qparams(
    lo: torch.Tensor, hi: torch.Tensor | None, spec: WeightSpec, global_scale: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``_qparams`` between the two checks that keep non-finite numbers out of the output."""
    if not bool(torch.isfinite(lo).all()) or (hi is not None and not bool(torch.isfinite(hi).all())):
        raise NonFiniteWeightError("the weight holds NaN or Inf values")
    scales, zero_points = _qparams(lo, hi, spec, global_scale)
    if not bool(torch.isfinite(scales).all()):
        raise NonFiniteScaleError(_scale_overflow_message(lo, hi, spec))
    if zero_points is not None and zero_points.dtype == _FP8 and bool(torch.isnan(zero_points.float()).any()):
        # calculate_qparams divides by the scale before replacing a zero scale with eps
        raise NonFiniteScaleError(
            "its all-zero cells get the FP8 zero point -448 - 0 / 0 = NaN in compressed-tensors' "
            "reference (the stored weight would decode to NaN); use a symmetric FP8 scheme or add its module to ignore."
        )
    return scales, zero_points


def _scale_overflow_message(lo: torch.Tensor, hi: torch.Tensor | None, spec: WeightSpec) -> str:
    dtype = str(lo.dtype).removeprefix("torch.")
    if hi is None:  # symmetric: lo is the cells' max |w|
        return (
            f"its max |w| = {float(lo.max()):.4g} gives a scale that is not finite in {dtype}, so the "
            "stored weight would decode to NaN; add its module to ignore."
        )
    return (
        f"its values span [{float(lo.min()):.4g}, {float(hi.max()):.4g}]: max - min overflows {dtype}, so the "
        "asymmetric scale is not finite and the stored weight would decode to NaN; quantize it with a "
        "symmetric scheme (e.g. W4A16) or add its module to ignore."
    )


def _small_outputs(param_scale, zero_points, spec: WeightSpec, shape, global_scale) -> dict[str, torch.Tensor]:
    """Every stored tensor but the main one, encoded as its :data:`FORMAT_TENSORS` row says."""
    out = {}
    for row in stored_tensors(spec):
        encoding = row.encoding
        if row.is_main:
            continue
        if encoding == "param":
            value = param_scale
        elif encoding == "cast":
            value = param_scale.to(row.dtype(spec, param_scale.dtype))
        elif encoding == "e8m0":
            value = _mx_exponent(param_scale, row.dtype(spec, param_scale.dtype))
        elif encoding == "global":
            value = global_scale
        elif encoding == "shape":
            value = torch.tensor(tuple(shape), device=param_scale.device)
        elif encoding == "int32_rows":
            value = _pack_int32(zero_points.t().contiguous(), spec.num_bits).t().contiguous()
        else:  # zero points as they are
            value = zero_points
        out[row.name] = value
    return out


def _mx_exponent(scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """E8M0 storage of power-of-two scales (``compress_mx_scale``)."""
    return (127 + torch.floor(torch.log2(scale)).to(torch.int32)).to(dtype)
