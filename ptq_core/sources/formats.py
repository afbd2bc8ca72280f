"""Source formats: what a checkpoint's weights already are, as plain frozen values.

Many checkpoints people want a new quantization of are quantized already:
DeepSeek-V3/R1, Kimi-K2, Qwen3 ``-FP8``, MiniMax-M2 and the GLM FP8 releases ship
FP8 blocks; others ship compressed-tensors, ModelOpt NVFP4 or AutoAWQ weights.
``sources.detect`` says which (a :class:`SourcePlan`), ``convert`` plans a converter
chain into one; the planner reads only these values: the format, and per quantized
module which stored tensor is read, which dependency tensors (scales, zero points) it
needs from whichever shard holds them, and the dense ``weight`` it stands for. No
torch, no network.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ..errors import InvalidOptionError

__all__ = [
    "AWQ",
    "COMPRESSED_TENSORS",
    "CONVERTED",
    "DENSE",
    "FP8_BLOCK",
    "MODELOPT_NVFP4",
    "Dequantization",
    "SourceFormat",
    "SourcePlan",
    "check_converters",
]

DENSE = "dense"
FP8_BLOCK = "fp8-block"
COMPRESSED_TENSORS = "compressed-tensors"
MODELOPT_NVFP4 = "modelopt-nvfp4"
AWQ = "awq"
CONVERTED = "converted"  # a caller's own converter chain (``model_free_ptq(converter=...)``)


@dataclass(frozen=True)
class SourceFormat:
    """What the source checkpoint's weights are stored as.

    Attributes:
        name: ``dense``, ``fp8-block``, ``compressed-tensors``, ``modelopt-nvfp4`` or ``awq``.
        summary: one line for the plan, e.g. "FP8 blocks (128x128), dequantized in memory".
        block: FP8 blocks only: ``weight_block_size`` (rows, cols).
        group_size, zero_point: AWQ only: its group size and whether it has zero points.
    """

    name: str
    summary: str
    block: tuple[int, int] | None = None
    group_size: int | None = None
    zero_point: bool | None = None

    @property
    def is_quantized(self) -> bool:
        return self.name != DENSE


@dataclass(frozen=True)
class Dequantization:
    """One tensor of the output that a converter makes in memory from source tensors.

    Attributes:
        module: the module name (``model.layers.0.self_attn.q_proj``).
        tensor: the stored tensor that holds the values (``...weight``, ``...weight_packed``,
            ``...qweight``); its shard is the output's shard.
        dependencies: the other tensors the conversion reads, in name order; they
            may sit in any shard, and none of them is copied to the output as is.
        output: the tensor it stands for (``{module}.weight``).
        dtype, shape: the output's safetensors dtype and shape, where the conversion
            changes them (``None``: FP8 blocks, which decode to BF16 in the same shape).
    """

    module: str
    tensor: str
    dependencies: tuple[str, ...]
    output: str
    dtype: str | None = None
    shape: tuple[int, ...] | None = None

    @property
    def by_converter(self) -> bool:
        """Made by a converter chain (dtype and shape known), not decoded by ptq-hub's FP8 path."""
        return self.dtype is not None


@dataclass(frozen=True)
class SourcePlan:
    """The source's format and every dequantization it needs.

    Attributes:
        format: what the source is.
        dequantize: every output tensor made in memory.
        converters: the compressed-tensors ``Converter`` chain that makes them, applied
            one module at a time; empty for FP8 blocks, which ptq-hub decodes itself
            inside the quantize step.
        append: the source's own ``quantization_config`` is kept and the new config
            groups are merged into it (a compressed-tensors source whose compressed
            modules are copied as they are, as llm-compressor does).
        kept: with ``append``, the modules the source already holds compressed.
    """

    format: SourceFormat
    dequantize: tuple[Dequantization, ...] = ()
    converters: tuple[Any, ...] = ()
    append: bool = False
    kept: frozenset[str] = frozenset()

    @cached_property
    def by_output(self) -> dict[str, Dequantization]:
        """``output`` name -> its dequantization (the planner looks weights up by dense name)."""
        return {d.output: d for d in self.dequantize}

    @cached_property
    def by_tensor(self) -> dict[str, tuple[Dequantization, ...]]:
        """Stored tensor -> the outputs made from it (in its place in the output)."""
        found: dict[str, list[Dequantization]] = {}
        for d in self.dequantize:
            found.setdefault(d.tensor, []).append(d)
        return {k: tuple(v) for k, v in found.items()}

    @cached_property
    def consumed(self) -> frozenset[str]:
        """Source tensors read only to be decoded: none of them is copied to the output."""
        return frozenset(n for d in self.dequantize for n in (d.tensor, *d.dependencies))


def check_converters(converter: object) -> tuple[Any, ...]:
    """``converter=`` as a chain: ``None``, one converter, or a list of them, each checked.

    Anything with compressed-tensors' ``Converter`` methods (``process``,
    ``get_dependencies``, ``update_config``; ``validate`` is optional) is accepted, so
    compressed-tensors' own converters are used as they are.

    Raises:
        InvalidOptionError: an entry lacks one of those methods.
    """
    if converter is None:
        return ()
    chain = tuple(converter) if isinstance(converter, (list, tuple)) else (converter,)
    for item in chain:
        missing = [m for m in ("process", "get_dependencies", "update_config") if not callable(getattr(item, m, None))]
        if missing:
            raise InvalidOptionError(
                f"converter {type(item).__name__} has no {', '.join(missing)}; pass a compressed-tensors Converter "
                "(FP8BlockDequantizer, CompressedTensorsDequantizer, ModelOptNvfp4Converter, AutoAWQConverter...) "
                "or a list of them."
            )
    return chain

