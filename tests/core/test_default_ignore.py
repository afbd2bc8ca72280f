"""The loader-safe defaults come from the model: config.json and the tensor shapes, not Llama's names.

Each case is a header set with a real architecture's tensor names (as its repos ship them),
planned through ``make_job`` (the front ends' default rule). The assertions are what the
loaders need: which modules stay in 16 bits, the entry written to config.json's ``ignore``,
that the entry matches the module under the loaders' prefixes too, and the plan's reason.
"""

from __future__ import annotations

import pytest

from ptq_core import make_job, plan_model, suggest_ignore
from ptq_core.checkpoint import headers_checkpoint
from ptq_core.default_ignore import loader_pattern, model_default_ignore
from ptq_core.errors import FusedGroupError, TensorShapeError
from ptq_core.matching import IgnoreMatcher, match_name

H, V, I, E = 128, 512, 256, 4


def _plan(tensors: dict[str, tuple[int, ...]], config: dict, scheme: str = "W4A16", **job):
    headers = {"model.safetensors": {name: ("BF16", shape) for name, shape in tensors.items()}}
    return plan_model(headers_checkpoint(headers), make_job("o/m", scheme, **job).resolved, config)


def _attn(prefix: str) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.self_attn.{p}_proj.weight": (H, H) for p in "qkvo"}


def _skipped_modules(plan) -> dict[str, str]:
    return {name.rpartition(".")[0]: reason for name, reason in plan.skipped.items()}


def test_gpt_neox_embed_in_and_embed_out_by_vocab_rows():
    tensors = {
        "gpt_neox.embed_in.weight": (V, H),
        "gpt_neox.layers.0.attention.query_key_value.weight": (3 * H, H),
        "gpt_neox.layers.0.attention.dense.weight": (H, H),
        "gpt_neox.layers.0.mlp.dense_h_to_4h.weight": (4 * H, H),
        "gpt_neox.layers.0.mlp.dense_4h_to_h.weight": (H, 4 * H),
        "embed_out.weight": (V, H),
    }
    plan = _plan(tensors, {"model_type": "gpt_neox", "vocab_size": V, "hidden_size": H})
    skipped = _skipped_modules(plan)
    assert skipped["gpt_neox.embed_in"] == "default: embedding or head (vocab_size rows)"
    assert skipped["embed_out"] == "default: embedding or head (vocab_size rows)"
    assert {i.module for i in plan.quantized} == {n.rpartition(".")[0] for n in tensors if ".layers." in n}
    assert r"re:.*embed_in$" in plan.resolved.ignore and r"re:.*embed_out$" in plan.resolved.ignore
    assert sorted(d.entry for d in plan.defaults) == [r"re:.*embed_in$", r"re:.*embed_out$"]
    assert sorted(suggest_ignore(plan)) == [r"re:.*embed_in$", r"re:.*embed_out$"]


def test_falcon_word_embeddings_by_name_even_when_not_vocab_sized():
    tensors = {"transformer.word_embeddings.weight": (V + 1, H), "transformer.h.0.mlp.dense_4h_to_h.weight": (H, 4 * H)}
    plan = _plan(tensors, {"vocab_size": V, "hidden_size": H})
    assert _skipped_modules(plan)["transformer.word_embeddings"] == "default: embedding (name)"
    assert r"re:.*word_embeddings$" in plan.resolved.ignore


def test_llava_prefixed_head_and_vision_tower_and_projector():
    tensors = {
        "language_model.lm_head.weight": (V, H),
        "language_model.model.embed_tokens.weight": (V, H),
        **_attn("language_model.model.layers.0"),
        **_attn("vision_tower.vision_model.encoder.layers.0"),
        "vision_tower.vision_model.embeddings.position_embedding.weight": (64, H),
        "multi_modal_projector.linear_1.weight": (H, H),
        "multi_modal_projector.linear_2.weight": (H, H),
    }
    config = {"model_type": "llava", "text_config": {"vocab_size": V, "hidden_size": H, "num_hidden_layers": 1},
              "vision_config": {"hidden_size": H}}
    plan = _plan(tensors, config)
    skipped = _skipped_modules(plan)
    assert skipped["language_model.lm_head"] == "default: embedding or head (vocab_size rows)"
    assert skipped["vision_tower.vision_model.encoder.layers.0.self_attn.q_proj"] == "default: vision tower (vision_config)"
    assert skipped["multi_modal_projector.linear_1"] == "default: multi-modal projector"
    assert {i.module for i in plan.quantized} == {f"language_model.model.layers.0.self_attn.{p}_proj" for p in "qkvo"}
    # the entries match the modules as transformers 5 names them too (model.language_model..., lm_head)
    ignore = IgnoreMatcher(plan.resolved.ignore)
    for loader_name in ("lm_head", "model.language_model.lm_head", "model.vision_tower.vision_model.encoder.layers.0.mlp.fc1",
                        "model.multi_modal_projector.linear_1"):
        assert ignore.match(loader_name) is not None, loader_name
    assert ignore.match("model.language_model.layers.0.self_attn.q_proj") is None


def test_no_tower_rule_without_a_vision_config():
    tensors = {**_attn("model.layers.0"), "model.visual_adapter.proj.weight": (H, H), "visual.proj.weight": (H, H)}
    plan = _plan(tensors, {"vocab_size": V, "hidden_size": H})
    assert "visual.proj" in {i.module for i in plan.quantized}
    assert not plan.defaults


def test_granitemoe_router_layer_by_shape():
    tensors = {
        **_attn("model.layers.0"),
        "model.layers.0.block_sparse_moe.router.layer.weight": (E, H),
        "model.layers.1.block_sparse_moe.router.layer.weight": (E, H),
    }
    plan = _plan(tensors, {"num_local_experts": E, "hidden_size": H, "vocab_size": V})
    skipped = _skipped_modules(plan)
    assert skipped["model.layers.1.block_sparse_moe.router.layer"] == "default: MoE router (num_experts rows)"
    assert [d.entry for d in plan.defaults] == [r"re:.*router\.layer$"]  # one entry for every layer


def test_deepseek_mtp_layer_beyond_num_hidden_layers():
    tensors = {**_attn("model.layers.0"), **_attn("model.layers.1"), "model.layers.1.eh_proj.weight": (H, 2 * H)}
    plan = _plan(tensors, {"num_hidden_layers": 1, "num_nextn_predict_layers": 1, "hidden_size": H})
    assert _skipped_modules(plan)["model.layers.1.eh_proj"] == "default: MTP layer (beyond num_hidden_layers)"
    assert r"re:.*layers\.1\." in plan.resolved.ignore
    assert {i.module for i in plan.quantized} == {f"model.layers.0.self_attn.{p}_proj" for p in "qkvo"}


def test_an_entry_never_matches_a_module_to_quantize():
    # InternLM2-style head `output` while `attention.output` is a projection to quantize
    tensors = {"output.weight": (V, H), "model.layers.0.attention.output.weight": (H, H)}
    defaults = model_default_ignore({"vocab_size": V, "hidden_size": H},
                                    headers_checkpoint({"s": {n: ("BF16", s) for n, s in tensors.items()}}).tensors.values())
    assert [d.entry for d in defaults] == ["output"]


def test_no_default_ignore_and_the_python_drop_in_keep_only_what_is_given(tmp_path):
    tensors = {"gpt_neox.embed_in.weight": (V, H), "gpt_neox.layers.0.attention.dense.weight": (H, H)}
    plan = _plan(tensors, {"vocab_size": V, "hidden_size": H}, default_ignore=False)
    assert plan.resolved.ignore == [] and not plan.defaults
    assert "gpt_neox.embed_in" in {i.module for i in plan.quantized}


def test_loader_pattern_matches_both_namings():
    pattern = loader_pattern("visual.blocks.0.mlp.down_proj")
    assert match_name("visual.blocks.0.mlp.down_proj", pattern)
    assert match_name("model.visual.blocks.0.mlp.down_proj", pattern)
    assert not match_name("model.visual.blocks.10.mlp.down_proj", pattern)


def test_shape_refusal_suggests_a_loader_proof_entry():
    tensors = {"visual.blocks.0.mlp.down_proj.weight": (H, 3420), **_attn("model.layers.0")}
    with pytest.raises(TensorShapeError, match=r"add 're:\.\*visual\\\.blocks\\\.0\\\.mlp\\\.down_proj\$' to ignore"):
        _plan(tensors, {"hidden_size": H}, default_ignore=False)
    # with the defaults, a VLM's tower is not quantized in the first place
    plan = _plan(tensors, {"hidden_size": H, "vision_config": {}})
    assert "visual.blocks.0.mlp.down_proj" not in {i.module for i in plan.quantized}


# --------------------------------------------------------------------------- fused groups


def test_ignoring_one_member_of_a_fused_group_ignores_its_siblings():
    tensors = {**_attn("model.layers.0"), "model.layers.0.mlp.gate_proj.weight": (I, H), "model.layers.0.mlp.up_proj.weight": (I, H)}
    plan = _plan(tensors, {"hidden_size": H}, scheme="NVFP4A16", ignore=[r"re:.*q_proj$"])
    skipped = _skipped_modules(plan)
    assert skipped["model.layers.0.self_attn.k_proj"] == "ignored with its fused sibling q_proj (q/k/v is one layer in vLLM)"
    assert {i.module for i in plan.quantized} == {"model.layers.0.self_attn.o_proj", "model.layers.0.mlp.gate_proj",
                                                  "model.layers.0.mlp.up_proj"}
    ignore = IgnoreMatcher(plan.resolved.ignore)
    assert ignore.match("model.layers.0.self_attn.v_proj") and ignore.match("model.layers.0.self_attn.k_proj")
    assert not plan.unmatched_ignore


def test_a_partial_nvfp4_fused_group_is_refused_naming_the_missing_partner():
    tensors = {f"model.layers.0.self_attn.{p}_proj.weight": (H, H) for p in "qko"}
    with pytest.raises(FusedGroupError, match=r"model\.layers\.0\.self_attn\.v_proj is not quantized with it"):
        _plan(tensors, {"hidden_size": H}, scheme="NVFP4A16")
    gate_only = {"model.layers.0.mlp.gate_proj.weight": (I, H)}
    with pytest.raises(FusedGroupError, match=r"mlp\.up_proj"):
        _plan(gate_only, {"hidden_size": H}, scheme="NVFP4A16")
    # no global scale, nothing to share: FP8 takes the same checkpoint
    assert len(_plan(tensors, {"hidden_size": H}, scheme="FP8_BLOCK").quantized) == 3


def test_mla_without_q_lora_is_not_a_partial_group():
    tensors = {"model.layers.0.self_attn.q_proj.weight": (H, H), "model.layers.0.self_attn.kv_a_proj_with_mqa.weight": (576 - 448, H),
               "model.layers.0.self_attn.kv_b_proj.weight": (H, H)}
    assert len(_plan(tensors, {"hidden_size": H}, scheme="NVFP4A16").quantized) == 3


def test_fused_members_in_different_groups_are_refused():
    from compressed_tensors.quantization import QuantizationConfig, preset_name_to_scheme

    config = QuantizationConfig(config_groups={
        "a": preset_name_to_scheme("FP8_DYNAMIC", [r"re:.*q_proj$"]),
        "b": preset_name_to_scheme("W8A16", ["Linear"]),
    })
    headers = {"s": {n: ("BF16", s) for n, s in _attn("model.layers.0").items()}}
    with pytest.raises(FusedGroupError, match="different config groups"):
        plan_model(headers_checkpoint(headers), make_job("o/m", config=config).resolved, {})
