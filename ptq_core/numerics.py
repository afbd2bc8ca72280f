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

import math
from dataclasses import dataclass

import torch

__all__ = [
    "WeightSpec",
    "global_scale_from_absmax",
    "output_layout",
    "quantize_weight",
    "tensor_absmax",
]

_FP8 = torch.float8_e4m3fn
_FP8_MAX = float(torch.finfo(_FP8).max)  # 448
_FP4_MAX = 6.0
_MX_ELEM_OFFSET = {4: 2, 8: 8}  # floor(log2(element max)): FP4 6 -> 2, FP8 448 -> 8
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

    @property
    def is_mx(self) -> bool:
        return (
            self.kind == "float"
            and self.num_bits in (4, 8)
            and self.group_size == 32
            and self.scale_dtype == torch.uint8
        )

    @property
    def q_range(self) -> tuple[float, float]:
        if self.kind == "int":
            return -(2.0 ** (self.num_bits - 1)), 2.0 ** (self.num_bits - 1) - 1
        top = _FP8_MAX if self.num_bits == 8 else _FP4_MAX
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


def output_layout(spec: WeightSpec, shape: tuple[int, int], dtype: torch.dtype) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """Local names, dtypes and shapes of the tensors a weight compresses into.

    Used by the planner to size shards and write safetensors headers before
    any tensor is computed.
    """
    rows, cols = shape
    scale_shape = _scale_shape(spec, rows, cols)
    pdt = _param_dtype(dtype)
    fmt = spec.fmt
    if fmt in ("nvfp4-pack-quantized", "mxfp4-pack-quantized"):
        out = [("weight_packed", torch.uint8, (rows, cols // 2))]
        if fmt == "nvfp4-pack-quantized":
            out += [("weight_scale", spec.scale_dtype or _FP8, scale_shape), ("weight_global_scale", torch.float32, (1,))]
        else:
            out += [("weight_scale", spec.scale_dtype or torch.uint8, scale_shape)]
        return out
    if fmt == "pack-quantized":
        out = [
            ("weight_packed", torch.int32, (rows, math.ceil(cols * spec.num_bits / 32))),
            ("weight_scale", pdt, scale_shape),
            ("weight_shape", torch.int64, (2,)),
        ]
        if not spec.symmetric:
            if spec.strategy in ("group", "channel"):
                zp_shape = (math.ceil(scale_shape[0] * spec.num_bits / 32), scale_shape[1])
                out.append(("weight_zero_point", torch.int32, zp_shape))
            else:
                out.append(("weight_zero_point", torch.int8, scale_shape))
        return out
    # naive family: float-quantized, int-quantized, naive-quantized, mxfp8-quantized
    qdtype = _FP8 if spec.kind == "float" else torch.int8
    scale_dtype = torch.uint8 if fmt == "mxfp8-quantized" else pdt
    out = [("weight", qdtype, (rows, cols)), ("weight_scale", scale_dtype, scale_shape)]
    if not spec.symmetric:
        out.append(("weight_zero_point", torch.int8, scale_shape))
    return out


# --------------------------------------------------------------------------- statistics
def _row_chunks(rows: int, cols: int, multiple: int = 1):
    step = max(multiple, (_CHUNK_ELEMS // max(cols, 1)) // multiple * multiple)
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


def tensor_absmax(weight: torch.Tensor) -> torch.Tensor:
    """max |w| over the whole tensor, in the weight's dtype (0-dim).

    For a fused group the global absmax is the max of its members' values,
    which equals the observer's ``max(max_vals.max(), -min_vals.min())``.
    """
    out = None
    for r0, r1 in _row_chunks(weight.shape[0], weight.shape[1]):
        m = weight[r0:r1].abs().amax()
        out = m if out is None else torch.maximum(out, m)
    return out


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


def _minmax(weight: torch.Tensor, spec: WeightSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-scale-cell statistics: (absmax, None) when symmetric, else (min, max).

    Symmetric quantization only ever uses max(|min(min,0)|, |max(max,0)|), which
    is exactly the cell's max |w|; one abs-max pass replaces two reductions.
    """
    rows, cols = weight.shape
    sym = spec.symmetric
    if spec.strategy == "tensor":
        if sym:
            return tensor_absmax(weight).reshape(1), None
        return weight.amin().reshape(1), weight.amax().reshape(1)
    if spec.strategy == "channel":
        if sym:
            return torch.cat([weight[a:b].abs().amax(dim=1, keepdim=True) for a, b in _row_chunks(rows, cols)]), None
        return weight.amin(dim=1, keepdim=True), weight.amax(dim=1, keepdim=True)
    if spec.strategy in ("group", "tensor_group"):
        g = spec.group_size
        if sym:
            parts = [weight[a:b].view(b - a, cols // g, g).abs().amax(dim=-1) for a, b in _row_chunks(rows, cols)]
            return torch.cat(parts), None
        grouped = weight.view(rows, cols // g, g)
        return grouped.amin(dim=-1), grouped.amax(dim=-1)
    # block: zero padding (as the reference pads) cannot change a max |w| or a min(.,0)/max(.,0)
    bh, bw = spec.block
    parts_lo, parts_hi = [], []
    for a, b in _row_chunks(rows, cols, multiple=bh):
        blocks = _pad_blocks(weight[a:b], bh, bw)
        if sym:
            parts_hi.append(blocks.abs().amax(dim=(1, 3)))
        else:
            parts_lo.append(blocks.amin(dim=(1, 3)))
            parts_hi.append(blocks.amax(dim=(1, 3)))
    if sym:
        return torch.cat(parts_hi), None
    return torch.cat(parts_lo), torch.cat(parts_hi)


def _pad_blocks(chunk: torch.Tensor, bh: int, bw: int) -> torch.Tensor:
    """View a row chunk as ``[row_blocks, bh, col_blocks, bw]``, zero-padding edges."""
    r, c = chunk.shape
    pr, pc = (-r) % bh, (-c) % bw
    if pr or pc:
        chunk = torch.nn.functional.pad(chunk, (0, pc, 0, pr))
    return chunk.reshape((r + pr) // bh, bh, (c + pc) // bw, bw)


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
            p2 = _round_to_power_2(max_val_pos)
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
    if zero_points is not None:
        info = torch.iinfo(torch.int8)
        zero_points = torch.round(torch.clamp(zero_points, info.min, info.max)).to(torch.int8)
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


def _pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    pairs = codes.view(codes.shape[0], -1, 2)
    return pairs[..., 0] | (pairs[..., 1] << 4)


def _pack_int32(q: torch.Tensor, num_bits: int) -> torch.Tensor:
    """Dense little-endian bit packing of int8 values into int32 words along dim 1.

    Same bits as compressed-tensors' ``pack_to_int32``: element i of each
    32-element group starts at bit i*num_bits; values are offset to unsigned.
    """
    rows, cols = q.shape
    offset = 1 << (num_bits - 1)
    packed_cols = math.ceil(cols * num_bits / 32)
    pad = (-cols) % 32
    if num_bits == 4:  # nibbles never straddle a byte: build bytes, view as words
        u = (q.to(torch.int16) + offset).to(torch.uint8)
        if pad:
            u = torch.nn.functional.pad(u, (0, pad))
        return _pack_nibbles(u).view(torch.int32)[:, :packed_cols].contiguous()
    if num_bits == 8:
        u = (q.to(torch.int16) + offset).to(torch.uint8)
        if pad:
            u = torch.nn.functional.pad(u, (0, pad))
        return u.view(torch.int32)[:, :packed_cols].contiguous()
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


def _quantize_chunk(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, spec: WeightSpec,
                    global_scale: torch.Tensor | None) -> torch.Tensor:
    """Quantize one row chunk whose scale already broadcasts against it.

    Returns int8 / fp8 values, or FP4 codes (uint8) for the FP4 formats.
    """
    if global_scale is not None:
        scale = scale / global_scale  # bf16 / f32 -> f32, as the reference
    scaled = x / scale
    if zp is not None:
        scaled += zp.to(x.dtype)
    q_min, q_max = spec.q_range
    scaled = torch.clamp(scaled, q_min, q_max)
    if spec.kind == "int":
        return torch.round(scaled).to(torch.int8)
    if spec.num_bits == 8:
        return scaled.to(_FP8)
    return _fp4_codes(scaled)


def quantize_weight(
    weight: torch.Tensor, spec: WeightSpec, *, global_scale: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Compress one 2-D weight; returns local names -> tensors (on the weight's device).

    Args:
        weight: ``[N, K]`` float weight (bf16/fp16/fp32), NaN-free (checked upstream).
        spec: the scheme's weight arguments.
        global_scale: NVFP4 only: the fused group's ``global_scale_from_absmax``.
    """
    rows, cols = weight.shape
    if spec.strategy == "tensor_group" and global_scale is None:
        global_scale = global_scale_from_absmax(tensor_absmax(weight))
    lo, hi = _minmax(weight, spec)
    scales, zero_points = _qparams(lo, hi, spec, global_scale)
    # the module's scale parameter has the weight's dtype: copy_ casts into it
    param_scale = scales.to(_param_dtype(weight.dtype))
    fp4 = spec.kind == "float" and spec.num_bits == 4
    qdtype = torch.uint8 if fp4 else (_FP8 if spec.kind == "float" else torch.int8)
    q = torch.empty(rows, cols, dtype=qdtype, device=weight.device)

    if spec.strategy == "block":
        bh, bw = spec.block
        for a, b in _row_chunks(rows, cols, multiple=bh):
            blocks = _pad_blocks(weight[a:b], bh, bw)
            s = param_scale[a // bh : math.ceil(b / bh)]
            z = zero_points[a // bh : math.ceil(b / bh)][:, None, :, None] if zero_points is not None else None
            out = _quantize_chunk(blocks, s[:, None, :, None], z, spec, None)
            q[a:b] = out.reshape(blocks.shape[0] * bh, -1)[: b - a, :cols]
    elif spec.strategy in ("group", "tensor_group"):
        g = spec.group_size
        for a, b in _row_chunks(rows, cols):
            x = weight[a:b].view(b - a, cols // g, g)
            z = zero_points[a:b, :, None] if zero_points is not None else None
            q[a:b] = _quantize_chunk(x, param_scale[a:b, :, None], z, spec, global_scale).view(b - a, cols)
    else:  # tensor / channel: the scale broadcasts as stored
        for a, b in _row_chunks(rows, cols):
            s = param_scale if spec.strategy == "tensor" else param_scale[a:b]
            z = None if zero_points is None else (zero_points if spec.strategy == "tensor" else zero_points[a:b])
            q[a:b] = _quantize_chunk(weight[a:b], s, z, spec, global_scale)

    return _compress(q, param_scale, zero_points, spec, weight.shape, global_scale)


def _compress(q, param_scale, zero_points, spec: WeightSpec, shape, global_scale) -> dict[str, torch.Tensor]:
    """Arrange quantized values and qparams as the format's compressor stores them."""
    fmt = spec.fmt
    if fmt in ("nvfp4-pack-quantized", "mxfp4-pack-quantized"):
        out = {"weight_packed": _pack_nibbles(q)}
        if fmt == "nvfp4-pack-quantized":
            out["weight_scale"] = param_scale.to(spec.scale_dtype or _FP8)
            out["weight_global_scale"] = global_scale
        else:
            out["weight_scale"] = _mx_exponent(param_scale, spec.scale_dtype or torch.uint8)
        return out
    if fmt == "pack-quantized":
        out = {
            "weight_packed": _pack_int32(q, spec.num_bits),
            "weight_scale": param_scale,
            "weight_shape": torch.tensor(tuple(shape), device=q.device),
        }
        if not spec.symmetric:
            if spec.strategy in ("group", "channel"):
                out["weight_zero_point"] = _pack_int32(zero_points.t().contiguous(), spec.num_bits).t().contiguous()
            else:
                out["weight_zero_point"] = zero_points
        return out
    scale = _mx_exponent(param_scale, torch.uint8) if fmt == "mxfp8-quantized" else param_scale
    out = {"weight": q, "weight_scale": scale}
    if not spec.symmetric:
        out["weight_zero_point"] = zero_points
    return out


def _mx_exponent(scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """E8M0 storage of power-of-two scales (``compress_mx_scale``)."""
    return (127 + torch.floor(torch.log2(scale)).to(torch.int32)).to(dtype)
