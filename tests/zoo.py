"""The architecture zoo: tiny, seeded, random-weight checkpoints of real architectures, written by
transformers' own config and model classes and its own ``save_pretrained``.

Unlike ``factory.py`` (which writes tensor names by hand), every checkpoint here is exactly what a
user gets from transformers for that architecture: its tensor names (embeddings and heads under
each family's names, vision towers, routers, fused 3-D experts or per-expert ones), its
``config.json`` and its shard index. ``tests/test_zoo.py`` quantizes each one with the CLI's
defaults and loads the result back in transformers.

Sizes: hidden 128, intermediate 256 (MoE experts 128), vocab 512, 2 layers, 4 heads, so every
Linear's in_features is a multiple of 128 (W4A16's group size, FP8_BLOCK's block, MXFP4's 32).
Weights are bf16, seeded (``torch.manual_seed(SEED)`` before the model is built), and saved
in shards of at most a third of the model's bytes, so every checkpoint has >= 2 shards.

``ZOO`` maps a case name to a ``ZooArch``; ``build(arch, path)`` writes the checkpoint (and
returns ``path``). Token ids 500-511 are reserved for the multimodal special tokens, so the
text batch of the tests stays below 500.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["SEED", "ZOO", "ZooArch", "build", "linear_modules", "make_model"]

SEED = 0
VOCAB = 512
HIDDEN = 128
INTER = 256
MOE_INTER = 128
EXPERTS = 4

# Shared text dims: 4 heads of 32 (o_proj in_features 128), GQA 2 kv heads, 2 layers.
_TEXT = dict(
    vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
    tie_word_embeddings=False,
)
# Multimodal special tokens, inside the vocabulary and above the test batch's ids.
_IMAGE_TOKEN = 510


@dataclass(frozen=True)
class ZooArch:
    """One architecture of the zoo.

    make: returns ``(model_class, config)``; the model is ``model_class(config)`` built after
        ``torch.manual_seed(SEED)``.
    vlm: load with ``AutoModelForImageTextToText`` (text-only input), else ``AutoModelForCausalLM``.
    save_original_format: passed to ``save_pretrained``; ``False`` writes MoE experts as fused
        3-D tensors (transformers' own runtime layout) instead of per-expert 2-D ones.
    """

    make: Callable[[], tuple[type, object]]
    vlm: bool = False
    save_original_format: bool = True


def _t():
    import transformers

    return transformers


# ----------------------------------------------------------------------------- dense text models


def _llama():
    t = _t()
    return t.LlamaForCausalLM, t.LlamaConfig(**_TEXT)


def _mistral():
    t = _t()
    return t.MistralForCausalLM, t.MistralConfig(**_TEXT, sliding_window=None)


def _qwen2():
    t = _t()
    return t.Qwen2ForCausalLM, t.Qwen2Config(**_TEXT)


def _qwen3():
    t = _t()
    return t.Qwen3ForCausalLM, t.Qwen3Config(**_TEXT)


def _gemma2():
    t = _t()
    return t.Gemma2ForCausalLM, t.Gemma2Config(**_TEXT | dict(tie_word_embeddings=True), query_pre_attn_scalar=32,
                                                sliding_window=64)


def _gemma3_text():
    t = _t()
    return t.Gemma3ForCausalLM, t.Gemma3TextConfig(**_TEXT | dict(tie_word_embeddings=True),
                                                    query_pre_attn_scalar=32, sliding_window=64)


def _phi3():
    t = _t()
    # Phi-3 stores fused qkv_proj ([q; k; v] rows) and gate_up_proj ([gate; up] rows) Linears.
    dims = {k: v for k, v in _TEXT.items() if k != "head_dim"}
    return t.Phi3ForCausalLM, t.Phi3Config(**dims, pad_token_id=0)


def _glm4():
    t = _t()
    # GLM-4 keeps a fused gate_up_proj Linear in its MLP.
    return t.Glm4ForCausalLM, t.Glm4Config(**_TEXT, pad_token_id=0)


def _granite():
    t = _t()
    return t.GraniteForCausalLM, t.GraniteConfig(**{k: v for k, v in _TEXT.items() if k != "head_dim"})


def _olmo2():
    t = _t()
    return t.Olmo2ForCausalLM, t.Olmo2Config(**{k: v for k, v in _TEXT.items() if k != "head_dim"}, pad_token_id=0)


def _falcon():
    t = _t()
    # New decoder architecture (Falcon-40B/180B style): transformer.word_embeddings, fused
    # self_attention.query_key_value, dense_h_to_4h / dense_4h_to_h, tied lm_head.
    config = t.FalconConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2,
        new_decoder_architecture=True, multi_query=False, parallel_attn=True, ffn_hidden_size=INTER,
        max_position_embeddings=256, bias=False,
    )
    return t.FalconForCausalLM, config


def _gpt_neox():
    t = _t()
    # gpt_neox.embed_in (embedding) and embed_out (the vocab-sized head, not called lm_head).
    config = t.GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=256, tie_word_embeddings=False,
    )
    return t.GPTNeoXForCausalLM, config


# ----------------------------------------------------------------------------- MoE text models


def _qwen3_moe():
    t = _t()
    config = t.Qwen3MoeConfig(**_TEXT, num_experts=EXPERTS, num_experts_per_tok=2, moe_intermediate_size=MOE_INTER,
                              decoder_sparse_step=1, mlp_only_layers=[])
    return t.Qwen3MoeForCausalLM, config


def _mixtral():
    t = _t()
    return t.MixtralForCausalLM, t.MixtralConfig(**_TEXT, num_local_experts=EXPERTS, num_experts_per_tok=2,
                                                  sliding_window=None)


def _deepseek_v3():
    t = _t()
    # MLA (q_lora_rank / kv_lora_rank 128, so q_b_proj / kv_b_proj have K = 128); layer 0 dense,
    # layer 1 MoE with a shared expert and a router with e_score_correction_bias.
    # kv_a_proj_with_mqa has kv_lora_rank + qk_rope_head_dim = 160 rows (not a multiple of 128,
    # like DeepSeek-V3's 576). The MTP layer is not a submodule of DeepseekV3ForCausalLM
    # (transformers builds it apart, as MtpModel), so save_pretrained writes none.
    config = t.DeepseekV3Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, moe_intermediate_size=MOE_INTER,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1,
        n_routed_experts=EXPERTS, kv_lora_rank=128, q_lora_rank=128, qk_rope_head_dim=32, v_head_dim=32,
        qk_nope_head_dim=32, n_group=1, topk_group=1, num_experts_per_tok=2, first_k_dense_replace=1,
        max_position_embeddings=256, tie_word_embeddings=False,
    )
    return t.DeepseekV3ForCausalLM, config


def _glm4_moe():
    t = _t()
    config = t.Glm4MoeConfig(
        **_TEXT, moe_intermediate_size=MOE_INTER, n_shared_experts=1, n_routed_experts=EXPERTS,
        num_experts_per_tok=2, n_group=1, topk_group=1, first_k_dense_replace=1, partial_rotary_factor=0.5,
    )
    return t.Glm4MoeForCausalLM, config


def _gpt_oss():
    t = _t()
    # Experts are 3-D parameters in every layout: gate_up_proj [E, H, 2I] with gate/up interleaved
    # along the last dim, down_proj [E, I, H], plus biases; router mlp.router (Linear with bias).
    # I (256) differs from H (128), so a wrong split axis or a missing transpose shows in the shapes.
    config = t.GptOssConfig(**_TEXT, num_local_experts=EXPERTS, num_experts_per_tok=2, sliding_window=64)
    return t.GptOssForCausalLM, config


def _granitemoe():
    t = _t()
    # block_sparse_moe.input_linear.weight [E, 2I, H] and output_linear.weight [E, H, I] (3-D, with
    # a .weight suffix), router block_sparse_moe.router.layer.weight.
    config = t.GraniteMoeConfig(**{k: v for k, v in _TEXT.items() if k != "head_dim"}, num_local_experts=EXPERTS,
                                num_experts_per_tok=2)
    return t.GraniteMoeForCausalLM, config


def _llama4():
    t = _t()
    # Llama4ForConditionalGeneration: vision_model + multi_modal_projector + language_model whose
    # MoE layers have fused 3-D experts (gate_up_proj [E, H, 2I], down_proj [E, I, H]), a
    # shared_expert and a router; interleave_moe_layer_step=2 so layer 0 is dense, layer 1 MoE.
    # The experts' intermediate size (256) differs from hidden (128), so an expert split on the
    # wrong axis or without its transpose shows in the shapes.
    text = dict(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, intermediate_size_mlp=INTER,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32, num_local_experts=EXPERTS,
        num_experts_per_tok=1, interleave_moe_layer_step=2, max_position_embeddings=256,
        attention_chunk_size=64, no_rope_layer_interval=2,
    )
    vision = dict(
        hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=INTER,
        vision_output_dim=HIDDEN, image_size=64, patch_size=16, projector_input_dim=HIDDEN,
        projector_output_dim=HIDDEN,
    )
    config = t.Llama4Config(vision_config=vision, text_config=text, boi_token_index=508, eoi_token_index=509,
                            image_token_index=_IMAGE_TOKEN)
    return t.Llama4ForConditionalGeneration, config


# ----------------------------------------------------------------------------- vision-language models


def _qwen2_5_vl():
    t = _t()
    text = {k: v for k, v in _TEXT.items() if k != "head_dim"} | dict(
        rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[4, 6, 6]))
    vision = dict(depth=2, hidden_size=HIDDEN, intermediate_size=INTER, num_heads=4, out_hidden_size=HIDDEN,
                  fullatt_block_indexes=[1], window_size=56)
    config = t.Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=_IMAGE_TOKEN,
                                video_token_id=511, vision_start_token_id=508, vision_end_token_id=509)
    return t.Qwen2_5_VLForConditionalGeneration, config


def _gemma3_vl():
    t = _t()
    text = _TEXT | dict(tie_word_embeddings=True, query_pre_attn_scalar=32, sliding_window=64)
    # 64x64 images of 16x16 patches: 4x4 patches pooled to mm_tokens_per_image = 4 (2x2).
    vision = dict(hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=2, num_attention_heads=4,
                  image_size=64, patch_size=16, vision_use_head=False)
    config = t.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, boi_token_index=508,
                            eoi_token_index=509, image_token_index=_IMAGE_TOKEN)
    return t.Gemma3ForConditionalGeneration, config


def _llava():
    t = _t()
    vision = t.CLIPVisionConfig(hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=2,
                                num_attention_heads=4, image_size=64, patch_size=16, projection_dim=HIDDEN)
    text = t.LlamaConfig(**_TEXT)
    config = t.LlavaConfig(vision_config=vision, text_config=text, image_token_index=_IMAGE_TOKEN,
                           image_seq_length=16)
    return t.LlavaForConditionalGeneration, config


ZOO: dict[str, ZooArch] = {
    "llama": ZooArch(_llama),
    "mistral": ZooArch(_mistral),
    "qwen2": ZooArch(_qwen2),
    "qwen3": ZooArch(_qwen3),
    "qwen3_moe": ZooArch(_qwen3_moe),
    "qwen3_moe_fused": ZooArch(_qwen3_moe, save_original_format=False),
    "mixtral": ZooArch(_mixtral),
    "mixtral_fused": ZooArch(_mixtral, save_original_format=False),
    "deepseek_v3": ZooArch(_deepseek_v3),
    "deepseek_v3_fused": ZooArch(_deepseek_v3, save_original_format=False),
    "gemma2": ZooArch(_gemma2),
    "gemma3_text": ZooArch(_gemma3_text),
    "phi3": ZooArch(_phi3),
    "gpt_oss": ZooArch(_gpt_oss),
    "glm4": ZooArch(_glm4),
    "glm4_moe": ZooArch(_glm4_moe),
    "granite": ZooArch(_granite),
    "granitemoe": ZooArch(_granitemoe),
    "olmo2": ZooArch(_olmo2),
    "falcon": ZooArch(_falcon),
    "gpt_neox": ZooArch(_gpt_neox),
    "qwen2_5_vl": ZooArch(_qwen2_5_vl, vlm=True),
    "gemma3_vl": ZooArch(_gemma3_vl, vlm=True),
    "llava": ZooArch(_llava, vlm=True),
    "llama4": ZooArch(_llama4, vlm=True),
}


def make_model(arch: ZooArch, seed: int = SEED) -> torch.nn.Module:
    """The seeded bf16 model of ``arch`` (transformers' own initialisation)."""
    model_class, config = arch.make()
    torch.manual_seed(seed)
    model = model_class(config)
    return model.to(torch.bfloat16).eval()


def build(arch: ZooArch, path: Path) -> Path:
    """Write ``arch``'s checkpoint into ``path`` with ``save_pretrained`` (>= 2 shards); return ``path``.

    Next to it, ``path.with_suffix('.linear.json')`` lists the checkpoint's Linear modules (see
    ``linear_modules``), kept outside the folder so it never travels with the checkpoint.
    """
    model = make_model(arch)
    total = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    model.save_pretrained(path, max_shard_size=max(total // 3, 1), save_original_format=arch.save_original_format)
    if len([p for p in path.glob("*.safetensors")]) < 2:
        raise RuntimeError(f"{path.name}: save_pretrained wrote one shard; the zoo wants >= 2")
    path.with_suffix(".linear.json").write_text(json.dumps(sorted(_linear_modules(model, path))))
    return path


def linear_modules(path: Path) -> set[str]:
    """The checkpoint's modules that are Linear layers (see ``build``)."""
    return set(json.loads(path.with_suffix(".linear.json").read_text()))


def _linear_modules(model: torch.nn.Module, path: Path) -> set[str]:
    """Checkpoint module names (as stored, which may differ from the model's attribute names) whose
    ``.weight`` is a ``torch.nn.Linear``'s weight, found by value: every Linear weight of the seeded
    random model is distinct. Per-expert projections written from 3-D expert parameters are not
    Linear modules of the model; the tests treat them as Linear (what the format and vLLM do)."""
    from safetensors import safe_open

    linear, other = set(), set()
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor):
            (linear if isinstance(module, torch.nn.Linear) else other).add(_key(weight.detach()))
    wanted = linear - other  # a head tied to an embedding is stored as the embedding
    found = set()
    for shard in path.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            for name in f.keys():
                if name.endswith(".weight"):
                    t = f.get_tensor(name)
                    if t.ndim == 2 and _key(t) in wanted:
                        found.add(name[: -len(".weight")])
    return found


def _key(t: torch.Tensor) -> tuple:
    t = t.contiguous()
    return (tuple(t.shape), t.dtype, bytes(t.view(-1).view(torch.uint8).numpy()))
