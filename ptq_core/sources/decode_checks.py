"""A detected source checked against its headers: before any read, and after its chain is planned.

Before: scales have the shapes their weights and the config's block or group size
give, and no block or group size is absurd for its weight (:func:`check_source_shapes`).
After: every module the source holds compressed is decoded by the chain, and no packed
tensor is left to be copied as it is under a config that does not describe it
(:func:`check_decoded`, :func:`check_no_packed_copies`). Headers only, no torch.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from ..errors import CheckpointError, TensorShapeError
from .formats import AWQ, COMPRESSED_TENSORS, FP8_BLOCK, SourcePlan

__all__ = ["check_decoded", "check_no_packed_copies", "check_source_shapes"]

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
