"""Source formats: what a checkpoint already is, and which tensors must be dequantized first.

Many checkpoints people want a new quantization of are quantized already:
DeepSeek-V3/R1, Kimi-K2, Qwen3 ``-FP8``, MiniMax-M2 and the GLM FP8 releases ship
FP8 blocks; others ship compressed-tensors, ModelOpt NVFP4 or AutoAWQ weights.
:func:`detect_source` reads ``config.json``'s ``quantization_config`` and the tensor
names (headers only) and says, as plain frozen values, what the planner needs:
the format, and per quantized module which stored tensor is read, which
dependency tensors (scales, zero points) it needs from whichever shard holds
them, and the dense ``weight`` it stands for. These match compressed-tensors'
converters (``FP8BlockDequantizer``, ``CompressedTensorsDequantizer``,
``ModelOptNvfp4Converter``, ``AutoAWQConverter``): their ``get_dependencies``
give the same sets.

Formats that cannot be dequantized faithfully without their own kernels
(GPTQ, bitsandbytes, ...) are refused with a typed error naming them.
No torch, no network: this runs on headers before any download.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable, Mapping

from .errors import CheckpointError, InvalidOptionError, UnsupportedSourceError

__all__ = ["Dequantization", "SourceFormat", "SourcePlan", "check_converters", "detect_source"]

DENSE = "dense"
FP8_BLOCK = "fp8-block"
COMPRESSED_TENSORS = "compressed-tensors"
MODELOPT_NVFP4 = "modelopt-nvfp4"
AWQ = "awq"
CONVERTED = "converted"  # a caller's own converter chain (``model_free_ptq(converter=...)``)

# compressed-tensors' per-module quantization parameters (its compressors' compression_param_names)
_CT_PARAMS = ("weight_scale", "weight_zero_point", "weight_global_scale", "weight_shape", "input_global_scale")
_MODELOPT_PARAMS = ("weight_scale", "weight_scale_2", "input_scale")

# quant_method values transformers knows, that we name when refusing them
_REFUSED = {
    "gptq": "GPTQ",
    "bitsandbytes": "bitsandbytes",
    "aqlm": "AQLM",
    "quanto": "Quanto",
    "eetq": "EETQ",
    "hqq": "HQQ",
    "exl2": "ExLlamaV2",
    "fbgemm_fp8": "FBGEMM FP8",
    "torchao": "torchao",
    "higgs": "HIGGS",
    "vptq": "VPTQ",
    "spqr": "SpQR",
    "bitnet": "BitNet",
    "mxfp4": "MXFP4 (gpt-oss)",
    "auto-round": "AutoRound",
    "gguf": "GGUF",
}


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


def detect_source(config: Mapping[str, Any], tensor_names: Iterable[str]) -> SourcePlan:
    """The source checkpoint's format and what must be dequantized, from config.json and names.

    Args:
        config: the parsed ``config.json``.
        tensor_names: every tensor name of the checkpoint (from the index or headers).

    Returns:
        a ``SourcePlan``; ``format.name == "dense"`` when ``config.json`` has no
        ``quantization_config``.

    Raises:
        UnsupportedSourceError: a quantization format ptq-hub cannot dequantize
            (GPTQ, bitsandbytes, per-tensor FP8, AWQ other than 4-bit GEMM, ...).
        CheckpointError: the config and the tensors disagree (an FP8-block config
            whose ``weight_scale_inv`` has no weight, or no scales at all).

    Example:
        >>> plan = detect_source({"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}},
        ...                      ["m.q_proj.weight", "m.q_proj.weight_scale_inv", "m.norm.weight"])
        >>> plan.format.summary, plan.dequantize[0].dependencies
        ('FP8 blocks (128x128), dequantized in memory', ('m.q_proj.weight_scale_inv',))
    """
    names = set(tensor_names)
    quant = config.get("quantization_config") or config.get("compression_config")
    if not quant:
        return SourcePlan(SourceFormat(DENSE, "dense weights"))
    if not isinstance(quant, Mapping):
        raise CheckpointError(f"config.json's quantization_config is a {type(quant).__name__}, not an object.")
    method = str(quant.get("quant_method", "")).lower()
    if method == "fp8":
        return _fp8_block(quant, names)
    if method == "compressed-tensors":
        _refuse_ct_extras(quant)
        return _compressed_tensors(names)
    if method == "modelopt":
        return _modelopt(quant, names)
    if method == "awq":
        return _awq(quant, names)
    label = _REFUSED.get(method, method or "an unnamed quant_method")
    raise UnsupportedSourceError(
        f"The source is quantized with {label} (quant_method {method!r}), which ptq-hub cannot dequantize; "
        "start from the unquantized (BF16/F16) release of the model."
    )


def _fp8_block(quant: Mapping[str, Any], names: set[str]) -> SourcePlan:
    block = quant.get("weight_block_size")
    if not block:
        raise UnsupportedSourceError(
            "The source is per-tensor FP8 (quant_method 'fp8' without weight_block_size), which ptq-hub cannot "
            "dequantize yet; start from the unquantized (BF16/F16) release of the model."
        )
    if not (isinstance(block, (list, tuple)) and len(block) == 2 and all(isinstance(v, int) and v > 0 for v in block)):
        raise CheckpointError(f"config.json's weight_block_size {block!r} is not two positive integers.")
    # FP8BlockDequantizer.from_pretrained: exactly the modules that carry a weight_scale_inv
    modules = sorted(n.removesuffix(".weight_scale_inv") for n in names if n.endswith(".weight_scale_inv"))
    if not modules:
        raise CheckpointError("config.json says FP8 blocks, but no tensor is named '*.weight_scale_inv'.")
    steps = []
    for module in modules:
        weight = f"{module}.weight"
        if weight not in names:
            raise CheckpointError(f"{module}.weight_scale_inv has no {weight} to dequantize.")
        if module.endswith("norm"):  # FP8BlockDequantizer never touches norms; their scale stays
            continue
        steps.append(Dequantization(module, weight, (f"{module}.weight_scale_inv",), weight))
    bh, bw = block
    return SourcePlan(SourceFormat(FP8_BLOCK, f"FP8 blocks ({bh}x{bw}), dequantized in memory", block=(bh, bw)), tuple(steps))


def _refuse_ct_extras(quant: Mapping[str, Any]) -> None:
    """Sparsity and transforms change what the stored weights mean beyond their quantization:
    dequantizing alone would give other numbers than the model's, so such sources are refused."""
    sparsity = quant.get("sparsity_config") or {}
    fmt = sparsity.get("format") if isinstance(sparsity, Mapping) else sparsity
    if fmt not in (None, "", "dense"):
        raise UnsupportedSourceError(
            f"The source is compressed-tensors with {fmt!r} sparsity, which ptq-hub cannot decompress; "
            "start from the dense (BF16/F16) release of the model."
        )
    if quant.get("transform_config"):
        raise UnsupportedSourceError(
            "The source is compressed-tensors with a transform_config (rotated weights): dequantizing it alone "
            "would not give the model's weights; start from the unquantized (BF16/F16) release of the model."
        )


def _compressed_tensors(names: set[str]) -> SourcePlan:
    steps = []
    for name in sorted(names):
        module, _, local = name.rpartition(".")
        packed = local == "weight_packed"
        naive = local == "weight" and f"{module}.weight_scale" in names and f"{module}.weight_packed" not in names
        if not (packed or naive):
            continue
        deps = tuple(f"{module}.{p}" for p in _CT_PARAMS if f"{module}.{p}" in names)
        if not any(d.endswith(".weight_scale") for d in deps):
            raise CheckpointError(f"{name} has no {module}.weight_scale to decompress it with.")
        steps.append(Dequantization(module, name, deps, f"{module}.weight"))
    return SourcePlan(SourceFormat(COMPRESSED_TENSORS, "compressed-tensors, decompressed in memory"), tuple(steps))


def _modelopt(quant: Mapping[str, Any], names: set[str]) -> SourcePlan:
    algo = str(quant.get("quant_algo") or (quant.get("quantization") or {}).get("quant_algo") or "").upper()
    if algo != "NVFP4":
        raise UnsupportedSourceError(
            f"The source is ModelOpt {algo or 'with no quant_algo'}; ptq-hub converts ModelOpt NVFP4 only. "
            "Start from the unquantized (BF16/F16) release of the model."
        )
    steps = []
    for name in sorted(names):
        module, _, local = name.rpartition(".")
        # ModelOptNvfp4Converter: a packed (uint8) weight comes with its two scales
        if local != "weight" or f"{module}.weight_scale_2" not in names:
            continue
        deps = tuple(f"{module}.{p}" for p in _MODELOPT_PARAMS if f"{module}.{p}" in names)
        steps.append(Dequantization(module, name, deps, name))
    return SourcePlan(SourceFormat(MODELOPT_NVFP4, "ModelOpt NVFP4, converted and decompressed in memory"), tuple(steps))


def _awq(quant: Mapping[str, Any], names: set[str]) -> SourcePlan:
    bits, version = quant.get("bits", 4), str(quant.get("version", "gemm")).lower()
    if bits != 4 or version != "gemm":
        raise UnsupportedSourceError(
            f"The source is AWQ {bits}-bit {version!r}; ptq-hub converts 4-bit GEMM AWQ only. "
            "Start from the unquantized (BF16/F16) release of the model."
        )
    zero_point = bool(quant.get("zero_point", True))
    group = int(quant.get("group_size", 128))
    skipped = [m for m in quant.get("modules_to_not_convert") or []]
    steps = []
    for name in sorted(names):
        if not name.endswith(".qweight"):
            continue
        module = name.removesuffix(".qweight")
        # AutoAWQConverter.from_autoawq_config ignores lm_head and modules_to_not_convert
        if module == "lm_head" or any(m in module for m in skipped):
            continue
        deps = [f"{module}.scales"] + ([f"{module}.qzeros"] if zero_point else [])
        missing = [d for d in deps if d not in names]
        if missing:
            raise CheckpointError(f"{name} has no {', '.join(missing)} to dequantize it with.")
        steps.append(Dequantization(module, name, tuple(sorted(deps)), f"{module}.weight"))
    summary = f"AWQ 4-bit (groups of {group}), converted and decompressed in memory"
    return SourcePlan(SourceFormat(AWQ, summary, group_size=group, zero_point=zero_point), tuple(steps))
