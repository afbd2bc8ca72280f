"""What a scheme's weight is to the kernels, and what it is stored as.

``WeightSpec`` carries the scheme's weight arguments (built by ``schemes.weight_spec``
from compressed-tensors' ``QuantizationArgs``, so the kernels import no
compressed-tensors), and :data:`FORMAT_TENSORS` is the one description of every
compressor's output: the planner sizes shards from it (:func:`output_layout`) and
``quantize_weight`` encodes from it. Torch only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .. import observers
from ..errors import SchemeNotSupportedError

__all__ = ["FORMAT_TENSORS", "StoredTensor", "WeightSpec", "output_layout", "stored_tensors"]

_FP8 = torch.float8_e4m3fn
_FP8_MAX = float(torch.finfo(_FP8).max)  # 448
_FP4_MAX = 6.0
_FP6_MAX = 7.5
_MX_ELEM_OFFSET = {4: 2, 6: 2, 8: 8}  # floor(log2(element max)): FP4 6 -> 2, FP6 7.5 -> 2, FP8 448 -> 8
# mantissa bits of the element type: MX scales round the group max up a power of two past them
_MX_ELEM_MANTISSA = {4: 1, 6: 3, 8: 1}  # compressed-tensors rounds FP8 with FP4's mantissa too


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
