"""fused_groups: sibling weights loaded as one layer, found by name and checked."""

from __future__ import annotations

from typing import NamedTuple

import pytest

from ptq_core.errors import FusedGroupError
from ptq_core.fused_groups import find_fused_groups, find_fused_sets, fused_siblings_to_ignore
from ptq_core.numerics import WeightSpec


class Unit(NamedTuple):
    name: str
    shard: str
    group: str | None


def _spec(strategy: str) -> WeightSpec:
    return WeightSpec(kind="float", num_bits=4, strategy=strategy, symmetric=True, fmt="nvfp4-pack-quantized", group_size=16)


def test_find_fused_sets_by_member_names():
    names = ["l.0.self_attn.k_proj.weight", "l.0.self_attn.q_proj.weight", "l.0.self_attn.v_proj.weight",
             "l.0.mlp.gate_proj.weight", "l.0.mlp.up_proj.weight", "l.0.mlp.down_proj.weight",
             "l.1.self_attn.q_proj.weight", "l.0.self_attn.q_proj.bias"]
    assert find_fused_sets(names) == [
        ("q/k/v", ("l.0.self_attn.q_proj.weight", "l.0.self_attn.k_proj.weight", "l.0.self_attn.v_proj.weight")),
        ("gate/up", ("l.0.mlp.gate_proj.weight", "l.0.mlp.up_proj.weight")),
    ]  # a lone q_proj is no set; biases are not members


def test_find_fused_groups_shares_a_global_scale_per_set():
    units = [Unit("a.gate_proj.weight", "s1", "g"), Unit("a.up_proj.weight", "s2", "g"),
             Unit("a.down_proj.weight", "s1", "g")]
    groups, index = find_fused_groups(units, {"g": _spec("tensor_group")})
    assert [(g.kind, g.members, g.split) for g in groups] == [
        ("gate/up", ("a.gate_proj.weight", "a.up_proj.weight"), True)]
    assert index == {"a.gate_proj.weight": 0, "a.up_proj.weight": 0}
    assert find_fused_groups(units, {"g": _spec("group")}) == ([], {})  # no global scale: no group


def test_an_nvfp4_set_with_a_member_missing_is_refused():
    units = [Unit("a.q_proj.weight", "s", "g"), Unit("a.k_proj.weight", "s", "g")]
    with pytest.raises(FusedGroupError, match="a.v_proj is not quantized with it"):
        find_fused_groups(units, {"g": _spec("tensor_group")})


def test_a_lone_mla_layer_is_its_own_layer():
    groups, _ = find_fused_groups([Unit("a.kv_a_proj_with_mqa.weight", "s", "g")], {"g": _spec("tensor_group")})
    assert groups == []


def test_an_ignored_member_takes_its_siblings():
    units = [Unit("a.q_proj.weight", "s", None), Unit("a.k_proj.weight", "s", "g"), Unit("a.v_proj.weight", "s", "g")]
    skipped = {"a.q_proj.weight": "ignored: matches `re:.*q_proj$`"}
    found = fused_siblings_to_ignore(units, skipped)
    assert sorted(found) == ["a.k_proj", "a.v_proj"]
    assert "ignored with its fused sibling q_proj" in found["a.k_proj"]
    # a member not quantized for another reason (not targeted) takes nobody along
    assert fused_siblings_to_ignore(units, {"a.q_proj.weight": "not targeted by any config group"}) == {}


def test_members_in_two_config_groups_are_refused():
    units = [Unit("a.gate_proj.weight", "s", "g1"), Unit("a.up_proj.weight", "s", "g2")]
    with pytest.raises(FusedGroupError, match="different config groups"):
        fused_siblings_to_ignore(units, {})
