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

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable, Mapping

from .errors import CheckpointError, InvalidOptionError, TensorShapeError, UnsupportedSourceError

__all__ = [
    "Dequantization",
    "SourceFormat",
    "SourcePlan",
    "check_converters",
    "check_decoded",
    "check_no_packed_copies",
    "check_source_shapes",
    "detect_source",
]

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
        source = _compressed_tensors(names)
        _check_ct_config(quant, compressed=bool(source.dequantize))
        return source
    if method == "modelopt":
        return _modelopt(quant, names)
    if method == "awq":
        return _awq(quant, names)
    label = _REFUSED.get(method, method or "an unnamed quant_method")
    raise UnsupportedSourceError(
        f"The source is quantized with {label} (quant_method {method!r}), which ptq-hub cannot dequantize; "
        "start from the unquantized (BF16/F16) release of the model."
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def _string_list(value: object, field: str) -> list[str]:
    """A list-valued config field: ``None`` or a list of strings. A single string would be
    read letter by letter (``"mlp"`` skips every module containing an ``m``), so it is refused,
    as ``matching.validate_ignore`` refuses ``ignore="lm_head"``."""
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        raise CheckpointError(
            f"config.json's {field} is the single string {_short(value)}, which would be read letter by letter; "
            f"it must be a list: [{_short(value)}]."
        )
    if not isinstance(value, (list, tuple)):
        raise CheckpointError(f"config.json's {field} is a {type(value).__name__}, not a list of names.")
    bad = [v for v in value if not isinstance(v, str) or not v]
    if bad:
        raise CheckpointError(f"config.json's {field} holds {_short(bad[0])}, not a module name; it must list names.")
    return list(value)


# compressed-tensors' QuantizationArgs: what a stored weight can be
_CT_BITS = {"int": range(1, 9), "float": (4, 8)}


def _check_ct_config(quant: Mapping[str, Any], *, compressed: bool) -> None:
    """Refuse a compressed-tensors config whose fields cannot describe a stored weight.

    compressed-tensors' own validation lets through strings where lists belong (``targets:
    "Linear"`` is refused, but ``ignore: "lm_head"`` reads letter by letter), string group
    sizes (then a ``TypeError`` deep inside), 0 or 64 bits, and an empty ``config_groups``:
    each would leave packed integers undecoded, so each is named here, before any read. No
    config groups at all is valid only where no weight is stored compressed (a kv-cache-only config).
    """
    groups = quant.get("config_groups")
    if not compressed and not groups:
        return
    if not isinstance(groups, Mapping) or not groups:
        raise CheckpointError(
            f"config.json's compressed-tensors quantization_config.config_groups is {_short(groups)}: it describes "
            "no compressed module, so the stored weights cannot be decompressed."
        )
    _string_list(quant.get("ignore"), "quantization_config.ignore")
    for key, group in groups.items():
        where = f"quantization_config.config_groups.{key}"
        if not isinstance(group, Mapping):
            raise CheckpointError(f"config.json's {where} is a {type(group).__name__}, not an object.")
        if not _string_list(group.get("targets"), f"{where}.targets"):
            raise CheckpointError(f"config.json's {where}.targets is empty: the group compresses no module.")
        for role in ("weights", "input_activations", "output_activations"):
            args = group.get(role)
            if args is None:
                continue
            if not isinstance(args, Mapping):
                raise CheckpointError(f"config.json's {where}.{role} is a {type(args).__name__}, not an object.")
            _check_ct_args(args, f"{where}.{role}")


def _check_ct_args(args: Mapping[str, Any], where: str) -> None:
    kind, bits = args.get("type", "int"), args.get("num_bits", 8)
    if kind not in _CT_BITS:
        raise CheckpointError(f"config.json's {where}.type {_short(kind)} is not 'int' or 'float'.")
    if not _is_int(bits) or bits not in _CT_BITS[kind]:
        allowed = "1 to 8" if kind == "int" else "4 or 8"
        raise CheckpointError(f"config.json's {where}.num_bits {_short(bits)} is impossible for type {kind!r} ({allowed}).")
    group = args.get("group_size")
    if group is not None and (not _is_int(group) or group == 0 or group < -1):  # -1: per channel
        raise CheckpointError(
            f"config.json's {where}.group_size {_short(group)} is not a positive integer (or -1 for per channel)."
        )
    block = args.get("block_structure")
    if block is not None and not (isinstance(block, (list, tuple)) and len(block) == 2
                                  and all(_is_int(v) and v > 0 for v in block)):
        raise CheckpointError(f"config.json's {where}.block_structure {_short(block)} is not two positive integers.")


# A block (or group) larger than the weight in a dimension is one block over that whole
# dimension: compressed-tensors pads the weight to whole blocks in float32 to decode it. A
# padded grid beyond twice the weight plus this many elements is no real checkpoint's and
# would only cost memory (a [2^22, 1] block on a 6 MB model took 8.5 GB), so it is refused.
_PAD_SLACK = 1 << 20


def check_source_shapes(
    source: SourcePlan, shapes: Mapping[str, tuple[str, tuple[int, ...]]], config: Mapping[str, Any] | None = None
) -> None:
    """Check a detected source's stored shapes against its config, from headers, before any read.

    FP8 blocks: each weight is 2-D float8, its ``weight_scale_inv`` has the block grid's shape,
    and the block size is not absurd for the weight. AWQ: each ``qweight``'s ``scales`` and
    ``qzeros`` have the shapes its group size gives. compressed-tensors: a group size or block
    structure is not absurd for the modules' packed shapes.

    Args:
        source: from :func:`detect_source`.
        shapes: tensor name -> (safetensors dtype, shape), from the headers.

    Raises:
        TensorShapeError: a scale's shape does not match its weight and the config (naming
            the weight, the scale, the expected and the found shape), or a block or group
            size is absurd for the weight's shape.
        CheckpointError: an FP8-block weight is not a 2-D float8 tensor.
    """
    if source.format.name == FP8_BLOCK:
        bh, bw = source.format.block
        for step in source.dequantize:
            dtype, shape = shapes[step.tensor]
            (scale,) = step.dependencies
            if dtype not in ("F8_E4M3", "F8_E5M2") or len(shape) != 2:
                raise CheckpointError(
                    f"{step.tensor} is {dtype} {list(shape)}, but it has a weight_scale_inv: an FP8-block weight "
                    "is a 2-D float8 tensor."
                )
            _check_blocks(step.tensor, shape, (bh, bw), "weight_block_size")
            expected = (-(-shape[0] // bh), -(-shape[1] // bw))
            if tuple(shapes[scale][1]) != expected:
                raise TensorShapeError(
                    f"{scale} has shape {list(shapes[scale][1])}, but its weight {step.tensor} {list(shape)} in "
                    f"{bh}x{bw} blocks needs {list(expected)}; check weight_block_size in config.json."
                )
    elif source.format.name == AWQ:
        group = source.format.group_size
        for step in source.dequantize:
            rows, packed = _two_d(step.tensor, shapes[step.tensor][1])
            cols = packed * 8
            if group > rows or rows % group:
                raise TensorShapeError(
                    f"{step.tensor} has {rows} input rows, which groups of {group} (quantization_config.group_size) "
                    "do not divide; check group_size in config.json."
                )
            for dep in step.dependencies:
                want = (rows // group, cols) if dep.endswith(".scales") else (rows // group, packed)
                if tuple(shapes[dep][1]) != want:
                    raise TensorShapeError(
                        f"{dep} has shape {list(shapes[dep][1])}, but {step.tensor} {[rows, packed]} in groups of "
                        f"{group} needs {list(want)}; check group_size in config.json."
                    )

    elif source.format.name == COMPRESSED_TENSORS and config is not None:
        sizes = _ct_sizes(config)
        for step in source.dequantize:
            dtype, (rows, stored) = shapes[step.tensor][0], _two_d(step.tensor, shapes[step.tensor][1])
            # the most columns the stored tensor can hold: packed int32 holds up to 32 values a
            # word (1 bit each), uint8 two FP4 values; a float-quantized weight is stored as is
            cols = stored * {"I32": 32, "U8": 2}.get(dtype, 1)
            for field, block in sizes:
                _check_blocks(step.tensor, (rows, cols), block, field,
                              f"({dtype} {list(shapes[step.tensor][1])}: at most {rows}x{cols} values)")


def _two_d(name: str, shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) != 2:
        raise CheckpointError(f"{name} has shape {list(shape)}; a quantized weight is stored 2-D.")
    return shape[0], shape[1]


def _check_blocks(name: str, shape: tuple[int, ...], block: tuple[int, int], field: str, seen: str = "") -> None:
    rows, cols = _two_d(name, shape)
    padded = -(-rows // block[0]) * block[0] * (-(-cols // block[1]) * block[1])
    if padded > 2 * rows * cols + _PAD_SLACK:
        value = block[1] if field.endswith("group_size") else list(block)
        raise TensorShapeError(
            f"{field} {value} is absurd for {name} {seen or [rows, cols]}: a block larger than the weight stands for "
            f"the whole dimension, but decoding pads the weight to {padded:,} elements; check it in config.json."
        )


def _ct_sizes(config: Mapping[str, Any]) -> list[tuple[str, tuple[int, int]]]:
    """Every (field, block) a compressed-tensors config's weights use: group sizes as [1, g]."""
    quant = config.get("quantization_config") or config.get("compression_config") or {}
    found = []
    for key, group in (quant.get("config_groups") or {}).items():
        args = group.get("weights") or {}
        where = f"quantization_config.config_groups.{key}.weights"
        if (args.get("group_size") or 0) > 0:
            found.append((f"{where}.group_size", (1, args["group_size"])))
        if args.get("block_structure"):
            found.append((f"{where}.block_structure", tuple(args["block_structure"])))
    return found


# Stored tensors that hold packed or quantized values: copied as they are, they would be
# published under a config that does not describe them.
_DTYPE_BITS = {"I32": 32, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "BF16": 16, "F16": 16, "I16": 16, "F32": 32}
_PACKED_SUFFIXES = (".weight_packed", ".qweight", ".qzeros", ".weight_scale_inv")


def check_decoded(detected: SourcePlan, planned: SourcePlan, config: Mapping[str, Any],
                  tensors: Mapping[str, tuple[str, tuple[int, ...]]]) -> None:
    """After a detected source's chain is planned: every module the source holds compressed is
    converted, its group or block sizes fit its weight, and no packed tensor is left to be copied.

    Args:
        detected: from :func:`detect_source`: the modules the source says are compressed.
        planned: the chain's plan (``convert.plan_conversion``), with output shapes.
        config: the source's ``config.json``.
        tensors: every stored tensor's safetensors dtype and shape.

    Raises:
        CheckpointError: a compressed module the chain leaves as it is (its config matches
            no module, or not this one), or a packed tensor that would be copied undecoded.
        TensorShapeError: a group size or block structure absurd for a module's weight.
    """
    label = detected.format.summary.partition(",")[0]
    for step in detected.dequantize:
        if step.tensor not in planned.consumed or step.output not in planned.by_output:
            raise CheckpointError(
                f"{step.module} is stored compressed ({step.tensor}), but config.json's quantization_config "
                f"({label}) describes no way to decode it: its config groups or targets match no such module. "
                "Fix quantization_config, or start from the unquantized (BF16/F16) release of the model."
            )
    if detected.format.name == COMPRESSED_TENSORS:
        fields = " / ".join(f"{f} {list(b) if b[0] > 1 else b[1]}" for f, b in _ct_sizes(config)) or "config groups"
        for step in detected.dequantize:
            dtype, shape = tensors[step.tensor]
            out = planned.by_output[step.output].shape or ()
            # compressed-tensors takes the dense shape from the scale grid x the group or block
            # size when it cannot read weight_shape (in planning): an absurd size shows as a weight
            # with more values than its stored tensor has bits (9571 TB for a 2^40 group).
            stored_bits = _DTYPE_BITS.get(dtype, 32) * math.prod(shape)
            if math.prod(out) > stored_bits:
                raise TensorShapeError(
                    f"{fields} is absurd for {step.tensor} ({dtype} {list(shape)}): decoded it would be "
                    f"{step.output} {list(out)}, more values than its {stored_bits:,} stored bits; "
                    "check the group size in config.json."
                )
            if len(out) == 2:
                for field, block in _ct_sizes(config):
                    _check_blocks(step.output, out, block, field)
    check_no_packed_copies(planned, tensors, label)


def check_no_packed_copies(planned: SourcePlan, tensors: Mapping[str, tuple[str, tuple[int, ...]]], label: str) -> None:
    """The plan's last check where the output's config describes no stored compression: no packed
    tensor (``weight_packed``, ``qweight``, ``qzeros``, ``weight_scale_inv``, an integer or FP8
    ``weight`` with a ``weight_scale``) is left to be copied as it is.

    Raises:
        CheckpointError: naming the first such tensor.
    """
    for name, (dtype, _) in tensors.items():
        packed = name.endswith(_PACKED_SUFFIXES) or (
            name.endswith(".weight") and dtype in ("I32", "U8", "I8", "F8_E4M3", "F8_E5M2")
            and f"{name.removesuffix('.weight')}.weight_scale" in tensors)
        if packed and name not in planned.consumed:
            raise CheckpointError(
                f"{name} ({dtype}) holds {label} values that no step decodes; copied as it is it would be "
                "published under a config that does not describe it. Fix quantization_config, or start from "
                "the unquantized (BF16/F16) release of the model."
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
    if _is_int(bits) and bits == 4 and version == "gemm":
        pass
    elif not _is_int(bits):
        raise CheckpointError(
            f"config.json's quantization_config.bits {_short(bits)} is a {type(bits).__name__}, not an integer; "
            "AutoAWQ writes the number of bits (4)."
        )
    else:
        raise UnsupportedSourceError(
            f"The source is AWQ {bits}-bit {version!r}; ptq-hub converts 4-bit GEMM AWQ only. "
            "Start from the unquantized (BF16/F16) release of the model."
        )
    zero_point = quant.get("zero_point", True)
    if not isinstance(zero_point, bool):
        raise CheckpointError(f"config.json's quantization_config.zero_point {_short(zero_point)} is not true or false.")
    group = quant.get("group_size", 128)
    if not _is_int(group) or group <= 0:
        raise CheckpointError(
            f"config.json's quantization_config.group_size {_short(group)} is not a positive integer "
            "(AutoAWQ writes e.g. 128)."
        )
    skipped = _string_list(quant.get("modules_to_not_convert"), "quantization_config.modules_to_not_convert")
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
