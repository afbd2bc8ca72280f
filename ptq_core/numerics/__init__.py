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

The package's modules: ``spec`` (``WeightSpec``, the format -> stored-tensors
table), ``scales`` (statistics, qparams, FP codes, packing), ``mse_search`` (the MSE
observers' search); this module quantizes and observes whole weights.

Every equality claim here is checked tensor by tensor in ``tests/core/test_numerics.py``
against compressed-tensors itself. The same ops run on CUDA, so a GPU gives the
CPU's bytes (the reference's Triton kernels divide in float32 instead; we follow
the CPU path everywhere so that output never depends on the device).

This module imports torch only.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Sequence

import torch

from .. import observers
from ..errors import CheckpointError, NonFiniteScaleError, TensorShapeError
from . import float_codes, int_codes
from .mse_search import _mse_stats
from .scales import (
    Scratch,
    WeightStats,
    _all_finite,
    _cells,
    _finite,
    _float_codes,
    _pack_fp6,
    _pack_int32,
    _pack_nibbles,
    _qparams,
    _row_chunks,
    _stats,
    global_scale_from_absmax,
    tensor_absmax,
)
from .spec import (
    _FP8,
    _FP8_MAX,
    FORMAT_TENSORS,
    StoredTensor,
    WeightSpec,
    _main_tensor,
    _param_dtype,
    output_layout,
    stored_tensors,
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


def _quantize_rows(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, spec: WeightSpec,
                   global_scale: torch.Tensor | None, scratch: Scratch, dest: torch.Tensor | None = None) -> torch.Tensor:
    """Quantize a row chunk with its scales; returns the chunk of the main stored tensor.

    Same elementwise operations as the reference's ``_quantize``: divide (in the
    weight's dtype, or float32 once a global scale is involved), add the zero
    point, clamp, round to the target grid, in L2-sized row slices (:mod:`.int_codes` from
    bit patterns where its bounds hold, else :func:`.float_codes.slice_codes` with the
    reference's ops). ``dest``: the output's rows, where the codes are written directly
    (saving a copy of the chunk).
    """
    rows, cols = x.shape
    cells, _ = _cells(x, spec, scratch)
    if spec.strategy == "block":
        scale = scale[:, None, :, None]
        zp = zp[:, None, :, None] if zp is not None else None
    elif spec.strategy in ("group", "tensor_group"):
        scale = scale[..., None]
        zp = zp[..., None] if zp is not None else None
    encoding = _main_tensor(spec).encoding
    if int_codes.applies(spec, encoding, x, scale, global_scale):
        return int_codes.int_codes(x, scale, zp, spec, encoding, scratch, dest)
    if global_scale is not None:
        scale = scale / global_scale  # bf16 / f32 -> f32, as the reference
    work_dtype = torch.promote_types(x.dtype, scale.dtype)
    if encoding == "plain" and spec.kind == "float":  # FP8
        mx = spec.is_mx and global_scale is None
        steps = float_codes.exponent_steps(x, scale) if mx else None
        recip = _exact_reciprocal(scale) if mx and steps is None else None
        # steps: the scales are normal powers of two, so _clamp_is_identity comes down to the
        # probe, for min/max ranges only (an MSE-shrunk one puts |x / scale| beyond what it casts)
        clamp = not (_fp8_cast_saturates(work_dtype, x.device) and spec.observer == observers.MINMAX if steps is not None
                     else _clamp_is_identity(spec, scale, global_scale, zp, work_dtype, x.device))
        out = dest if dest is not None else scratch.get("q", (rows, cols), _FP8, x.device)
        float_codes.slice_codes(cells, scale, zp, clamp, spec, rows, cols, scratch,
                                lambda v, a, b: _cast_to_fp8(v, out[a:b]), recip=recip, steps=steps)
        return out
    if encoding in ("fp4_nibbles", "fp6_bytes"):
        bits, pack = (4, _pack_nibbles) if encoding == "fp4_nibbles" else (6, _pack_fp6)
        recip = _exact_reciprocal(scale) if spec.is_mx and global_scale is None else None
        packed = dest if dest is not None else scratch.get("packed", (rows, cols * bits // 8), torch.uint8, x.device)

        def encode(v: torch.Tensor, first: int, end: int) -> None:
            codes = scratch.get("codes", tuple(v.shape), torch.uint8, x.device)
            pack(_float_codes(v, codes, scratch, bits), packed[first:end])

        float_codes.slice_codes(cells, scale, zp, True, spec, rows, cols, scratch, encode, recip=recip)
        return packed
    if spec.kind == "int":  # where int_codes' bounds do not hold: round, cast to int8, pack
        words = encoding == "int32_bits"
        shape = (rows, math.ceil(cols * spec.num_bits / 32)) if words else (rows, cols)
        out = dest if dest is not None else scratch.get("q_out", shape, torch.int32 if words else torch.int8, x.device)

        def encode(v: torch.Tensor, first: int, end: int) -> None:
            q = scratch.get("q", tuple(v.shape), torch.int8, x.device).copy_(v.round_())
            out[first:end] = _pack_int32(q, spec.num_bits, scratch) if words else q

        float_codes.slice_codes(cells, scale, zp, True, spec, rows, cols, scratch, encode)
        return out
    raise AssertionError(f"no kernel writes the {encoding!r} encoding of {spec.kind} weights")


def _exact_reciprocal(scale: torch.Tensor) -> torch.Tensor | None:
    """``1 / scale`` where multiplying by it gives the reference's ``w / scale`` exactly, else None.

    MX scales are powers of two; where the dtype also holds each one's reciprocal
    (bf16 and float32 always; fp16 not below 2**-15), ``w * (1 / s)`` is the exact
    ``w / s`` rounded once, as the quotient is. For a power of two, ``r * s == 1`` holds
    exactly when ``r`` is its exact reciprocal (an overflowed or flushed one gives inf,
    NaN or 0), so that one check proves it.
    """
    recip = torch.reciprocal(scale)
    return recip if bool((recip * scale == 1).all()) else None


def _clamp_is_identity(
    spec: WeightSpec, scale: torch.Tensor, global_scale, zp, dtype: torch.dtype, device: torch.device
) -> bool:
    """True when clamping to +-448 before the FP8 cast provably changes no output byte.

    For symmetric FP8 with ``scale = round(amax / 448)`` in a float dtype whose
    scales are all normal numbers, the rounding error of the scale is at most
    2^-8 relative, so ``|x / scale| <= 448 / (1 - 2^-8) < 450``, which rounds
    (again in the weight dtype) to at most 450. A cast that rounds anything
    below 464 to at most 448 then gives exactly what clamp-then-cast gives;
    :func:`_fp8_cast_saturates` checks that this torch's cast does. MX scales
    are powers of two with ``amax / scale <= 448`` by construction. Subnormal
    scales (weights near 1e-38) lose that bound, so they keep the clamp, and so do
    ranges an MSE search chose: a cell shrunk by a factor ``f`` puts ``|x / scale|``
    up to ``448 / f``, beyond the values the probe casts.
    """
    if spec.kind != "float" or spec.num_bits != 8 or global_scale is not None or zp is not None:
        return False
    if spec.observer != observers.MINMAX:
        return False
    if not scale.dtype.is_floating_point:
        return False
    if not bool((scale >= torch.finfo(scale.dtype).tiny).all()):
        return False
    return _fp8_cast_saturates(dtype, device)


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
        dest = full[a:b] if full is not None else None
        out = _quantize_rows(x, scales, zps, spec, global_scale, scratch, dest)
        if sink is not None:
            sink(main, a, out)
        elif out is not dest:
            full[a:b] = out
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
    _finite(lo, hi)
    scales, zero_points = _qparams(lo, hi, spec, global_scale)
    if not _all_finite(scales):
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
