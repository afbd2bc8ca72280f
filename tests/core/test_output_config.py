"""output_config: a merged config is checked module by module, as a loader resolves it."""

from __future__ import annotations

import pytest

from ptq_core.checkpoint import headers_checkpoint
from ptq_core.errors import AppendError
from ptq_core.output_config import check_merged_config, output_quantization_config
from ptq_core.planner import build_plan
from ptq_core.schemes import resolve_config

HEADERS = {"model.safetensors": {
    "l.0.self_attn.o_proj.weight": ("BF16", (64, 64)),
    "l.0.mlp.down_proj.weight": ("BF16", (64, 64)),
}}


@pytest.fixture(scope="module")
def plan():
    """down_proj quantized now, o_proj left dense."""
    return build_plan(headers_checkpoint(HEADERS), resolve_config("FP8_DYNAMIC", None, ["re:.*o_proj$"]))


def _merged(ours: dict) -> dict:
    earlier = {"targets": ["re:.*k_proj$"], "weights": {"num_bits": 4}}
    return {"config_groups": {"earlier": earlier, "FP8_DYNAMIC": ours}, "ignore": []}


def test_a_config_that_names_the_modules_quantized_now_passes(plan):
    assert [g for g, _ in plan.resolved.groups] == ["FP8_DYNAMIC"]
    check_merged_config(plan, _merged({"targets": ["l.0.mlp.down_proj"]}), earlier_groups=1)


def test_a_group_targeting_linear_would_take_the_dense_module(plan):
    with pytest.raises(AppendError, match="l.0.self_attn.o_proj is dense, but a loader would give it group FP8_DYNAMIC"):
        check_merged_config(plan, _merged({"targets": ["Linear"]}), earlier_groups=1)


def test_a_module_quantized_now_but_ignored_is_refused(plan):
    merged = {**_merged({"targets": ["l.0.mlp.down_proj"]}), "ignore": ["re:.*down_proj$"]}
    with pytest.raises(AppendError, match="l.0.mlp.down_proj is quantized now, but a loader would give it no config group"):
        check_merged_config(plan, merged, earlier_groups=1)


def test_without_converters_or_append_the_config_is_the_requests(plan):
    merged = output_quantization_config(None, plan.source, plan.resolved, {"l.0.mlp.down_proj": "FP8_DYNAMIC"},
                                        {"l.0.mlp.down_proj", "l.0.self_attn.o_proj"})
    assert merged.earlier_groups == 0 and merged.block == plan.resolved.quantization_config_dict()
    assert output_quantization_config(None, plan.source, plan.resolved, {}, ()).block is None
