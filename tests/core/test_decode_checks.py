"""sources.decode_checks: a detected source's stored shapes checked from headers, before any read;
no packed tensor left to copy after the chain is planned."""

from __future__ import annotations

import pytest

from ptq_core.errors import CheckpointError, TensorShapeError
from ptq_core.sources.decode_checks import check_no_packed_copies, check_source_shapes
from ptq_core.sources.detect import detect_source

FP8 = {"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}
AWQ = {"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm",
                               "zero_point": True}}


def _fp8(weight=("F8_E4M3", (256, 200)), scale=("F32", (2, 2))):
    shapes = {"a.q_proj.weight": weight, "a.q_proj.weight_scale_inv": scale}
    return detect_source(FP8, shapes), shapes


def test_fp8_block_scales_fit_their_weights():
    check_source_shapes(*_fp8())  # 256x200 in 128x128 blocks: a 2x2 grid (the last column block padded)
    with pytest.raises(TensorShapeError, match=r"a.q_proj.weight_scale_inv has shape \[2, 1\], but its weight "
                                               r"a.q_proj.weight \[256, 200\] in 128x128 blocks needs \[2, 2\]"):
        check_source_shapes(*_fp8(scale=("F32", (2, 1))))
    with pytest.raises(CheckpointError, match="an FP8-block weight is a 2-D float8 tensor"):
        check_source_shapes(*_fp8(weight=("BF16", (256, 200))))


def test_awq_groups_must_divide_the_rows_and_size_scales_and_zeros():
    names = {"a.q_proj.qweight": ("I32", (256, 16)), "a.q_proj.qzeros": ("I32", (2, 16)),
             "a.q_proj.scales": ("F16", (2, 128))}
    source = detect_source(AWQ, names)
    check_source_shapes(source, names)
    with pytest.raises(TensorShapeError, match=r"a.q_proj.scales has shape \[2, 64\], but .* needs \[2, 128\]"):
        check_source_shapes(source, {**names, "a.q_proj.scales": ("F16", (2, 64))})
    with pytest.raises(TensorShapeError, match="200 input rows, which groups of 128"):
        check_source_shapes(source, {**names, "a.q_proj.qweight": ("I32", (200, 16))})


def test_an_absurd_block_size_is_refused_before_decoding_pads_the_weight():
    config = {"quantization_config": {"quant_method": "fp8", "weight_block_size": [1 << 20, 1 << 20]}}
    shapes = {"a.q_proj.weight": ("F8_E4M3", (256, 256)), "a.q_proj.weight_scale_inv": ("F32", (1, 1))}
    with pytest.raises(TensorShapeError, match="absurd for a.q_proj.weight"):
        check_source_shapes(detect_source(config, shapes), shapes)


def test_a_packed_tensor_no_step_decodes_is_never_copied():
    source, shapes = _fp8()
    check_no_packed_copies(source, shapes, "FP8")  # both consumed by the plan
    with pytest.raises(CheckpointError, match=r"b.weight_packed \(I32\) holds compressed values that no step decodes"):
        check_no_packed_copies(source, {**shapes, "b.weight_packed": ("I32", (4, 4))}, "compressed")
    int_weight = {"c.weight": ("I8", (4, 4)), "c.weight_scale": ("F32", (4, 1))}
    with pytest.raises(CheckpointError, match=r"c.weight \(I8\)"):
        check_no_packed_copies(source, {**shapes, **int_weight}, "int8")
