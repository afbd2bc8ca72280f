"""The rotation golden cases: seeded zoo checkpoints and the options each is rotated with.

Imported both by ``make_rotation_golden.py`` (which runs llm-compressor 0.15's published
``spinquant.py`` on them, in a side venv) and by ``tests/core/test_rotation.py`` (which runs
``ptq_core.rotation`` on them), so both sides build the same checkpoint from transformers' own
classes; the stored ``source_digest`` proves they did. Imports: torch, transformers, safetensors
and ``tests/zoo.py``.

The golden file stores, per case and per output tensor, its dtype, shape and the sha256 of its
bytes: byte identity, at a few kB per case.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zoo  # noqa: E402

GOLDEN_FILE = "rotation.json"
# MLA's residual readers, which the peer's default mapping lacks (ptq-hub's layout has them).
MLA_ATTN_IN = [r"\.self_attn\.(q|k|v)_proj$", r"\.self_attn\.(q_a_proj|kv_a_proj_with_mqa)$"]


def _tied_llama():
    t = zoo._t()
    return t.LlamaForCausalLM, t.LlamaConfig(**{**zoo._TEXT, "tie_word_embeddings": True})


def _deepseek_v3_mla():
    # hidden 256 with every other width off its multiples (q_b 192x96, kv_b 192x64, o_proj 256x64,
    # kv_a_proj_with_mqa 80x256): the zoo's DeepSeek (hidden 128, lora ranks 128) has inner MLA
    # weights as wide as the residual stream, which no rotation layout can tell apart.
    t = zoo._t()
    config = t.DeepseekV3Config(
        vocab_size=zoo.VOCAB, hidden_size=256, intermediate_size=384, moe_intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1,
        n_routed_experts=zoo.EXPERTS, kv_lora_rank=64, q_lora_rank=96, qk_rope_head_dim=16, v_head_dim=16,
        qk_nope_head_dim=32, n_group=1, topk_group=1, num_experts_per_tok=2, first_k_dense_replace=1,
        max_position_embeddings=256, tie_word_embeddings=False,
    )
    return t.DeepseekV3ForCausalLM, config


def _wide_qwen2():
    # hidden 192 = 12 x 16: no Sylvester Hadamard, a random one (order 12) exists; heads of 32.
    t = zoo._t()
    return t.Qwen2ForCausalLM, t.Qwen2Config(**{**zoo._TEXT, "hidden_size": 192, "num_attention_heads": 6,
                                                "num_key_value_heads": 2, "head_dim": 32})


@dataclass(frozen=True)
class RotationCase:
    """One checkpoint and what the peer is given: ``ignore`` regexes, an MLA ``attn_in`` and
    ``peer_options`` (its constructor's keywords); ``options`` are what ptq-hub is given (none:
    its own choices, which must land on the peer's bytes)."""

    id: str
    arch: zoo.ZooArch
    ignore: tuple[str, ...] = ()
    attn_in: tuple[str, ...] | None = None
    expect_rotations: tuple[str, ...] = ("R1", "R2")
    notes: str = ""
    peer_options: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)


def cases() -> list[RotationCase]:
    return [
        RotationCase("llama", zoo.ZOO["llama"]),
        RotationCase("qwen3", zoo.ZOO["qwen3"], notes="q_norm / k_norm stay as they are"),
        RotationCase("qwen3_moe", zoo.ZOO["qwen3_moe"], notes="per-expert projections and routers"),
        RotationCase("qwen3_moe_fused", zoo.ZOO["qwen3_moe_fused"], notes="3-D gate_up_proj / down_proj"),
        RotationCase("llama_tied", zoo.ZooArch(_tied_llama), notes="lm_head made from the embedding"),
        RotationCase("deepseek_v3", zoo.ZooArch(_deepseek_v3_mla), attn_in=tuple(MLA_ATTN_IN),
                     expect_rotations=("R1",), notes="MLA: R1 only"),
        RotationCase("qwen2_5_vl", zoo.ZOO["qwen2_5_vl"], ignore=(r"(^|\.)visual\.",),
                     notes="vision tower left alone; q/k/v biases"),
        RotationCase("llava", zoo.ZOO["llava"], ignore=(r"(^|\.)multi_modal_projector\.", r"(^|\.)vision_tower\."),
                     notes="CLIP tower with Llama-like layer names, left alone"),
        RotationCase("qwen2_wide", zoo.ZooArch(_wide_qwen2), peer_options={"transform_type": "random-hadamard"},
                     notes="hidden 192: ptq-hub picks the random Hadamard by itself (seed 0, as the peer's)"),
        RotationCase("llama_blocks", zoo.ZOO["llama"], notes="block-diagonal R1 (64 of 128), random, seed 3",
                     peer_options=(blocks := {"transform_type": "random-hadamard", "transform_block_size": 64,
                                              "seed": 3}), options=blocks),
    ]


def build_source(case: RotationCase, root: Path) -> Path:
    """The case's checkpoint under ``root`` (transformers' ``save_pretrained``, >= 2 shards)."""
    return zoo.build(case.arch, root / case.id)


def shard_tensors(path: Path) -> Iterable[dict[str, torch.Tensor]]:
    """Each shard's tensors, as the peer hands one file at a time to ``process``."""
    for shard in sorted(path.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            yield {name: f.get_tensor(name) for name in f.keys()}


def tensor_record(tensor: torch.Tensor) -> list:
    """[dtype, shape, sha256 of the bytes]: what the golden file keeps of one tensor."""
    data = tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    return [str(tensor.dtype).removeprefix("torch."), list(tensor.shape), hashlib.sha256(data).hexdigest()]


def source_digest(path: Path) -> str:
    """One sha256 over every source tensor (name, dtype, shape, bytes), in name order."""
    digest = hashlib.sha256()
    records = {n: tensor_record(t) for shard in shard_tensors(path) for n, t in shard.items()}
    for name in sorted(records):
        digest.update(f"{name}|{records[name]}".encode())
    return digest.hexdigest()


def rotate_checkpoint(path: Path, process: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> dict:
    """name -> record for every tensor ``process`` makes, shard by shard."""
    out: dict[str, list] = {}
    for tensors in shard_tensors(path):
        for name, tensor in process(tensors).items():
            out[name] = tensor_record(tensor)
    return out
