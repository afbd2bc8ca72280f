"""Planning as a unit: typed records, one pass, fused groups and their home shard, exact sizes."""

from __future__ import annotations

import math

import pytest

from ptq_core import build_plan, make_job, plan_checkpoint
from ptq_core.checkpoint import headers_checkpoint
from ptq_core.errors import InvalidOptionError
from ptq_core.fused_groups import find_fused_sets
from ptq_core.plan import OutputTensor, PlannedWeight

H = 128
HEADERS = {
    "a.safetensors": {
        "model.layers.0.self_attn.q_proj.weight": ("BF16", (H, H)),
        "model.layers.0.mlp.gate_proj.weight": ("BF16", (2 * H, H)),
        "model.layers.0.input_layernorm.weight": ("BF16", (H,)),
        "model.layers.0.self_attn.o_proj.bias": ("BF16", (H,)),
        "model.layers.0.mlp.empty_proj.weight": ("BF16", (0, H)),
        "lm_head.weight": ("BF16", (128, H)),
    },
    "b.safetensors": {
        "model.layers.0.self_attn.k_proj.weight": ("BF16", (H // 2, H)),
        "model.layers.0.self_attn.v_proj.weight": ("BF16", (H // 2, H)),
        "model.layers.0.mlp.up_proj.weight": ("BF16", (2 * H, H)),
        "model.layers.1.mlp.experts.gate_up_proj": ("BF16", (2, 2 * H, H)),
    },
}


# the fused experts are identified from the model's config.json (experts.ExpertRules)
CONFIG = {"model_type": "qwen3_moe", "hidden_size": H, "moe_intermediate_size": H, "num_experts": 2}


def _plan(scheme: str):
    return build_plan(headers_checkpoint(HEADERS), make_job("o/m", scheme).resolved, config=CONFIG)


def test_fused_groups_share_one_home_shard_and_a_global_scale():
    plan = _plan("NVFP4A16")
    by_first = {g.members[0]: g for g in plan.fused_groups}
    qkv = by_first["model.layers.0.self_attn.q_proj.weight"]
    assert (qkv.kind, qkv.members) == ("q/k/v", tuple(f"model.layers.0.self_attn.{m}_proj.weight" for m in "qkv"))
    assert qkv.split and by_first["model.layers.0.mlp.gate_proj.weight"].split
    items = {i.name: i for i in plan.items}
    for group in plan.fused_groups:
        home = items[group.members[0]].shard
        assert {items[m].shard for m in group.members} == {home}
    # the split 3-D experts pair per expert, not with each other
    assert ("gate/up", ("model.layers.1.mlp.experts.0.gate_proj.weight", "model.layers.1.mlp.experts.0.up_proj.weight")) in [
        (g.kind, g.members) for g in plan.fused_groups
    ]


def test_fused_groups_exist_only_for_a_global_scale():
    assert _plan("FP8_BLOCK").fused_groups == ()


def test_records_sizes_and_reasons():
    plan = _plan("W4A16")
    assert all(isinstance(i, PlannedWeight) for i in plan.items)
    assert all(isinstance(o, OutputTensor) for i in plan.items for o in i.outputs)
    assert plan.skipped["model.layers.0.input_layernorm.weight"] == "norm layer"
    assert plan.skipped["lm_head.weight"] == "default: head (name)"
    assert plan.skipped["model.layers.0.mlp.empty_proj.weight"] == "empty: shape [0, 128]"
    assert "model.layers.0.self_attn.o_proj.bias" not in plan.skipped  # a bias is copied silently
    assert plan.size_after == sum(o.nbytes for i in plan.items for o in i.outputs)
    assert plan.size_before == sum(
        2 * math.prod(shape) for shard in HEADERS.values() for _, shape in shard.values()
    )
    by_shard = {s: plan.shard_outputs(s) for s in plan.shards}
    assert sorted(o.name for outs in by_shard.values() for o in outs) == sorted(plan.weight_map())
    q = next(i for i in plan.items if i.name.endswith("q_proj.weight"))
    assert [o.name for o in q.outputs] == [
        "model.layers.0.self_attn.q_proj.weight_packed",
        "model.layers.0.self_attn.q_proj.weight_scale",
        "model.layers.0.self_attn.q_proj.weight_shape",
    ]


def test_find_fused_sets_in_one_pass():
    names = ["x.q_proj.weight", "x.k_proj.weight", "y.q_proj.weight", "z.w1.weight", "z.w3.weight", "z.w2.weight",
             "q_proj.weight", "x.q_proj.bias"]
    assert find_fused_sets(names) == [("q/k/v", ("x.q_proj.weight", "x.k_proj.weight")), ("w1/w3", ("z.w1.weight", "z.w3.weight"))]


def test_plan_checkpoint_takes_a_folder_or_headers_not_both(tmp_path):
    with pytest.raises(InvalidOptionError, match="a model folder or headers=, exactly one"):
        plan_checkpoint(tmp_path, "W4A16", headers=HEADERS)
    with pytest.raises(InvalidOptionError, match="a model folder or headers=, exactly one"):
        plan_checkpoint(scheme="W4A16")
