"""Which format a source checkpoint is, from ``config.json`` and its tensor names (headers only).

:func:`detect_source` reads ``config.json``'s ``quantization_config`` and the tensor
names and returns a ``formats.SourcePlan``: per quantized module the stored tensor, its
dependencies and the dense ``weight`` it stands for. These match compressed-tensors'
converters (``FP8BlockDequantizer``, ``CompressedTensorsDequantizer``,
``ModelOptNvfp4Converter``, ``AutoAWQConverter``): their ``get_dependencies`` give the
same sets. The config fields are checked on the way (lists not strings, bits, group
sizes): compressed-tensors' own validation lets several wrong values through.

Formats that cannot be dequantized faithfully without their own kernels
(GPTQ, bitsandbytes, ...) are refused with a typed error naming them.
No torch, no network: this runs on headers before any download.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from ..errors import CheckpointError, UnsupportedSourceError
from .formats import AWQ, COMPRESSED_TENSORS, DENSE, FP8_BLOCK, MODELOPT_NVFP4, Dequantization, SourceFormat, SourcePlan

__all__ = ["detect_source"]

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
    quant = config.get("quantization_config") or config.get("compression_config")
    if not quant:
        return SourcePlan(SourceFormat(DENSE, "dense weights"))
    if not isinstance(quant, Mapping):
        raise CheckpointError(f"config.json's quantization_config is a {type(quant).__name__}, not an object.")
    names = set(tensor_names)
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
