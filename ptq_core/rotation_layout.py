"""Where SpinQuant's rotations go, and which models it must refuse: names and model types only.

Kept apart from the arithmetic (``rotation.py``) because it is the part that grows with each
architecture users bring: a new name pattern or a refused family is a change here, checked by
``tests/core/test_rotation.py``'s sweep of the test zoo (every text architecture there either
computes the same logits rotated, or is refused with a reason).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConverterError

__all__ = [
    "OFFSET_NORM_MODELS", "RotationLayout", "check_projector", "compiled", "matches_any", "norm_names_of",
    "refuse_offset_norms", "rotation_ignore",
]

# Model types whose RMSNorm multiplies by (1 + w), not w (transformers' ``GemmaRMSNorm`` and its
# kin; tests/core/test_rotation.py rereads the installed transformers to keep this list whole).
# Folding w as a scale would give a model that computes something else, with no error anywhere.
OFFSET_NORM_MODELS = frozenset({
    "gemma", "gemma2", "gemma3", "gemma3_text", "recurrent_gemma", "vaultgemma", "t5gemma", "t5gemma2",
    "t5gemma2_text", "t5gemma2_encoder", "t5gemma2_decoder", "t5_gemma_module", "qwen3_next", "qwen3_5",
    "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text", "qwen4_exp", "qwen4_exp_text", "minimax_m3_vl",
    "minimax_m3_vl_text", "muse_glimmer", "muse_glimmer_text", "muse_spark", "muse_spark_text", "step3p5", "step3p7",
})
# Vision / audio towers and projectors: outside the rotated text stream (their own widths).
_TOWERS = re.compile(r"(^|\.)(visual|vision_tower|vision_model|vision_encoder|image_encoder|vpm|audio_tower|"
                     r"audio_model|audio_encoder|multi_modal_projector|mm_projector|embed_vision|embed_audio)\.")


@dataclass(frozen=True)
class RotationLayout:
    """Where the rotations are fused, as regexes searched in module names.

    The peer's ``SpinQuantConverterMapping`` defaults (Llama-style names, MoE experts and
    routers, DeepSeek-V4 mHC mixers as ``residual``), plus three additions for which the peer's
    defaults give a wrong or no model:

    * Mixtral's per-expert names as the Hub stores them (``block_sparse_moe.experts.N.w1/w3``
      read the stream, ``w2`` writes it, ``block_sparse_moe.gate`` routes): the peer's names
      match transformers' fused runtime layout only, and refuse the checkpoints users download.

    * MLA's two residual readers (``q_a_proj``, ``kv_a_proj_with_mqa``): without them an MLA
      model cannot be rotated at all; for every other model they match nothing.
    * ``projector_out``: the last linear of a multimodal projector, whose outputs replace token
      embeddings in the residual stream, so they are rotated by R1 like the embedding (rows, and
      its bias), although the rest of its tower is left alone. The peer leaves the whole tower to
      ``ignore``, and its rotated model then reads un-rotated image features.
    """

    embedding: str = r"(^|\.)embed_tokens$"
    attn_in: tuple[str, ...] = (r"\.self_attn\.(q|k|v)_proj$", r"\.self_attn\.(q_a_proj|kv_a_proj_with_mqa)$")
    attn_out: tuple[str, ...] = (r"\.self_attn\.o_proj$",)
    attn_v: str = r"\.self_attn\.v_proj$"
    attn_o: str = r"\.self_attn\.o_proj$"
    mlp_in: tuple[str, ...] = (r"\.mlp\.(.+\.)?(gate|up|gate_up)_proj$", r"\.mlp\.gate$", r"\.mlp\.shared_expert_gate$",
                               r"\.block_sparse_moe\.(gate|experts\.\d+\.w[13])$")
    mlp_out: tuple[str, ...] = (r"\.mlp\.(.+\.)?down_proj$", r"\.block_sparse_moe\.experts\.\d+\.w2$")
    lm_head: str = r"(^|\.)lm_head$"
    residual: tuple[str, ...] = (r"(^|\.)hc_(attn|ffn|head)_fn$",)
    projector_out: tuple[str, ...] = (
        r"(^|\.)multi_modal_projector\.linear_2$",                      # LLaVA
        r"(^|\.)visual\.merger\.mlp\.2$",                              # Qwen2-VL, Qwen2.5-VL
        r"(^|\.)visual\.(merger|deepstack_merger_list\.\d+)\.linear_fc2$",  # Qwen3-VL
    )
    attn_norm: str = "input_layernorm"
    mlp_norm: str = "post_attention_layernorm"
    final_norm: str = "norm"


def compiled(patterns: Iterable[str]) -> list[re.Pattern]:
    return [re.compile(p) for p in patterns]


def matches_any(patterns: Sequence[re.Pattern], name: str) -> bool:
    return any(p.search(name) for p in patterns)


def refuse_offset_norms(config: Mapping[str, Any]) -> None:
    """Refuse a model whose norms scale by (1 + w): folding w would change what it computes."""
    text = config.get("text_config", config)
    types = {config.get("model_type")} | ({text.get("model_type")} if isinstance(text, Mapping) else set())
    offset = types & OFFSET_NORM_MODELS
    if offset:
        raise ConverterError(f"{sorted(offset)[0]} scales its RMSNorms by (1 + w), not by w; SpinQuant folds w into "
                             "the next linears, so the rotated model would compute something else. Rotation is "
                             "not offered for this model family; quantize it without --rotate.")


def rotation_ignore(config: Mapping[str, Any], names: Iterable[str]) -> list[str]:
    """Regexes for the towers and projectors of a multimodal model: left as they are.

    They have their own widths and never read the text residual stream (only with a
    ``vision_config`` / ``audio_config`` section, as ``default_ignore`` decides towers).
    """
    if not any(isinstance(config.get(k), Mapping) for k in ("vision_config", "audio_config")):
        return []
    roots = sorted({m.group(0).lstrip(".") for m in map(_TOWERS.search, names) if m})
    return [r"(^|\.)" + re.escape(root) for root in roots]


def check_projector(ignore: list[str], names: Sequence[str], layout: RotationLayout) -> None:
    """A multimodal model's towers are left alone only if its projector's output can be rotated."""
    projector = compiled(layout.projector_out)
    if ignore and not any(matches_any(projector, n.rpartition(".")[0]) for n in names):
        raise ConverterError(
            "This multimodal model's projector is not one SpinQuant knows (LLaVA, Qwen2/2.5/3-VL): its image or "
            "audio features would enter the rotated residual stream un-rotated. Run without rotate."
        )


def norm_names_of(names: Sequence[str], layout: RotationLayout) -> list[str]:
    """Every per-layer attention / MLP norm, and the final norm beside each embedding."""
    per_layer = re.compile(rf"(^|\.)layers\.\d+\.({layout.attn_norm}|{layout.mlp_norm})\.weight$")
    embedding = re.compile(layout.embedding)
    finals = {".".join(filter(None, (n[: -len(".weight")].rpartition(".")[0], layout.final_norm, "weight")))
              for n in names if n.endswith(".weight") and embedding.search(n[: -len(".weight")])}
    return [n for n in names if per_layer.search(n) or n in finals]
