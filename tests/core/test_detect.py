"""sources.detect: which format a source is, from config.json and tensor names, its fields checked.

tests/test_converters.py compares each detected chain with compressed-tensors' own converters
and the refusals by name; here, the config fields a stored weight cannot have.
"""

from __future__ import annotations

import pytest

from ptq_core.errors import CheckpointError
from ptq_core.sources.detect import detect_source
from ptq_core.sources.formats import AWQ, COMPRESSED_TENSORS, DENSE, FP8_BLOCK

CT_NAMES = ["m.layers.0.q_proj.weight_packed", "m.layers.0.q_proj.weight_scale", "m.layers.0.q_proj.weight_shape"]


def _ct(group=None, **fields):
    group = {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "group_size": 128}} if group is None else group
    return {"quantization_config": {"quant_method": "compressed-tensors", "format": "pack-quantized",
                                    "config_groups": {"group_0": group}, **fields}}


def test_each_format_by_name():
    assert detect_source({}, ["a.weight"]).format.name == DENSE
    fp8 = {"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}
    plan = detect_source(fp8, ["a.q_proj.weight", "a.q_proj.weight_scale_inv"])
    assert plan.format.name == FP8_BLOCK and plan.format.block == (128, 128)
    assert [(d.tensor, d.dependencies) for d in plan.dequantize] == [("a.q_proj.weight", ("a.q_proj.weight_scale_inv",))]
    assert detect_source(_ct(), CT_NAMES).format.name == COMPRESSED_TENSORS
    awq = {"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm",
                                   "zero_point": True}}
    names = ["a.q_proj.qweight", "a.q_proj.qzeros", "a.q_proj.scales"]
    assert detect_source(awq, names).format.name == AWQ


@pytest.mark.parametrize("config,words", [
    (_ct(ignore="lm_head"), r"ignore is the single string 'lm_head', which would be read letter by letter"),
    (_ct(ignore=[3]), r"ignore holds 3, not a module name"),
    (_ct({"targets": "Linear", "weights": {"num_bits": 4}}), r"targets is the single string 'Linear'"),
    (_ct({"targets": [], "weights": {"num_bits": 4}}), r"targets is empty: the group compresses no module"),
    (_ct({"targets": ["Linear"], "weights": {"num_bits": 0}}), r"num_bits 0 is impossible for type 'int' \(1 to 8\)"),
    (_ct({"targets": ["Linear"], "weights": {"type": "float", "num_bits": 6}}), r"num_bits 6 is impossible for type 'float'"),
    (_ct({"targets": ["Linear"], "weights": {"num_bits": 4, "group_size": "128"}}), r"group_size '128' is not a positive"),
    (_ct({"targets": ["Linear"], "weights": {"num_bits": 8, "block_structure": [128]}}), r"block_structure \[128\] is not two"),
    (_ct({"targets": ["Linear"], "weights": {"type": "int4"}}), r"type 'int4' is not 'int' or 'float'"),
])
def test_config_fields_a_stored_weight_cannot_have_are_named(config, words):
    with pytest.raises(CheckpointError, match=words):
        detect_source(config, CT_NAMES)


def test_a_compressed_source_without_config_groups_cannot_be_decoded():
    config = _ct()
    config["quantization_config"]["config_groups"] = {}
    with pytest.raises(CheckpointError, match="describes no compressed module"):
        detect_source(config, CT_NAMES)
