"""planner: headers + request -> Plan, with no tensor data read (tests/core/test_plan.py has the records)."""

from __future__ import annotations

import pytest
from factory import TINY_LLAMA_DIMS, make_checkpoint

from ptq_core.checkpoint import headers_checkpoint, open_checkpoint, read_config
from ptq_core.errors import CheckpointError, TensorParallelError, TensorShapeError, UnsupportedSourceError
from ptq_core.job import make_job
from ptq_core.planner import build_plan, plan_checkpoint, plan_model, source_plan, suggest_ignore
from ptq_core.schemes import DEFAULT_IGNORE, resolve_config
from ptq_core.plan import DENSE_SOURCE

H = 128
LAYER = "model.layers.0"
HEADERS = {"model.safetensors": {
    "model.embed_tokens.weight": ("BF16", (256, H)),
    f"{LAYER}.self_attn.q_proj.weight": ("BF16", (H, H)),
    f"{LAYER}.self_attn.o_proj.weight": ("BF16", (H, H)),
    f"{LAYER}.mlp.gate.weight": ("BF16", (4, H)),
    f"{LAYER}.post_attention_layernorm.weight": ("BF16", (H,)),
    "lm_head.weight": ("BF16", (256, H)),
}}


def test_plan_checkpoint_from_headers_quantizes_linears_and_says_why_others_are_copied():
    plan = plan_checkpoint(scheme="FP8_BLOCK", ignore=["lm_head"], headers=HEADERS)
    assert {i.name for i in plan.quantized} == {"model.embed_tokens.weight", f"{LAYER}.mlp.gate.weight",
                                                f"{LAYER}.self_attn.o_proj.weight", f"{LAYER}.self_attn.q_proj.weight"}
    assert plan.skipped["lm_head.weight"].startswith("ignored")
    assert plan.skipped[f"{LAYER}.post_attention_layernorm.weight"] == "norm layer"
    assert plan.scheme_name == "FP8_BLOCK" and plan.source == DENSE_SOURCE and plan.unmatched_ignore == ()


def test_the_front_ends_defaults_keep_the_head_embedding_and_router():
    plan = build_plan(headers_checkpoint(HEADERS), make_job("o/m", "FP8_BLOCK").resolved)
    assert {i.name for i in plan.quantized} == {f"{LAYER}.self_attn.q_proj.weight", f"{LAYER}.self_attn.o_proj.weight"}
    assert plan.skipped[f"{LAYER}.mlp.gate.weight"] == "default: MoE router (name)"


def test_an_ignore_entry_matching_nothing_is_reported():
    plan = plan_checkpoint(scheme="FP8_BLOCK", ignore=["lm_hed"], headers=HEADERS)
    assert plan.unmatched_ignore == ("lm_hed",)


def test_suggest_ignore_lists_the_name_rules_the_model_has():
    names = [n for shard in HEADERS.values() for n in shard]
    assert suggest_ignore(names) == [e for e in DEFAULT_IGNORE if e in ("lm_head", r"re:.*embed_tokens$", r"re:.*\.gate$")]
    assert suggest_ignore(["model.layers.0.mlp.down_proj.weight"]) == []


def test_columns_not_divisible_by_the_group_size_name_the_fix():
    headers = {"m.safetensors": {"x.proj.weight": ("BF16", (64, 100))}}
    with pytest.raises(TensorShapeError, match=r"x.proj.weight: 100 columns are not divisible by the group size 128"):
        plan_checkpoint(scheme="W4A16", headers=headers)


def test_an_integer_weight_is_not_quantized_again():
    headers = {"m.safetensors": {"x.proj.weight": ("I8", (64, 128))}}
    with pytest.raises(CheckpointError, match="x.proj.weight"):
        plan_checkpoint(scheme="FP8_BLOCK", headers=headers)


def test_a_tp_size_vllm_cannot_shard_at_is_refused_before_anything_runs():
    headers = {"m.safetensors": {"x.q_proj.weight": ("BF16", (256, 256))}}  # 2 blocks of 128 rows
    plan = plan_model(headers_checkpoint(headers), resolve_config("FP8_BLOCK"), None)
    assert plan.tensor_parallel.loads[:2] == (1, 2) and 4 in plan.tensor_parallel.blocked
    assert "64 output rows per GPU are not a multiple of the 128-row FP8 block" in plan.tensor_parallel.blocked[4]
    assert plan_model(headers_checkpoint(headers), resolve_config("FP8_BLOCK"), None, tp=2).tensor_parallel.loads
    with pytest.raises(TensorParallelError, match="64 output rows per GPU"):
        plan_model(headers_checkpoint(headers), resolve_config("FP8_BLOCK"), None, tp=4)


def test_a_folder_is_planned_from_its_headers_and_config(tmp_path):
    folder = make_checkpoint(tmp_path / "m", "llama", **TINY_LLAMA_DIMS)
    plan = plan_checkpoint(folder, "W8A16")
    again = plan_model(open_checkpoint(folder), resolve_config("W8A16"), read_config(folder))
    assert plan.weight_map() == again.weight_map() and plan.size_after == again.size_after
    assert source_plan(open_checkpoint(folder), read_config(folder)) == DENSE_SOURCE


def test_a_quantized_format_it_cannot_decode_is_refused_by_name():
    config = {"quantization_config": {"quant_method": "gptq", "bits": 4}}
    with pytest.raises(UnsupportedSourceError, match="(?i)gptq"):
        source_plan(headers_checkpoint(HEADERS), config)
