"""The tensor-parallel sizes vLLM can shard an output at, as the plan reports them and --tp enforces.

The rules are vLLM 0.33's own (``fp8_utils.validate_fp8_block_shape`` and
``validate_fp8_block_shape_moe``, ``marlin_utils.verify_group_size_divides_partition``);
each case below is a real model's width that breaks one of them at some TP size.
"""

from __future__ import annotations

import pytest

from ptq_core import make_job, plan_model
from ptq_core.checkpoint import headers_checkpoint
from ptq_core.cli import main as cli_main
from ptq_core.errors import InvalidOptionError, TensorParallelError

H = 2048


def _plan(tensors: dict[str, tuple[int, int]], scheme: str, config: dict | None = None, tp: int | None = None):
    headers = {"s.safetensors": {name: ("BF16", shape) for name, shape in tensors.items()}}
    return plan_model(headers_checkpoint(headers), make_job("o/m", scheme).resolved, config or {}, tp=tp)


# Qwen3-30B-A3B-like experts: moe_intermediate_size 768
EXPERTS = {f"model.layers.0.mlp.experts.0.{p}.weight": (768, H) for p in ("gate_proj", "up_proj")} | {
    "model.layers.0.mlp.experts.0.down_proj.weight": (H, 768)}


def test_fp8_block_moe_experts_split_below_a_block():
    report = _plan(EXPERTS, "FP8_BLOCK").tensor_parallel
    assert report.loads == (1, 2)  # 768/2 = 384 = 3 blocks; 768/4 = 192 is not a whole block
    assert report.blocked[4] == ("model.layers.0.mlp.experts.0.gate_proj: 192 output rows per GPU are not a multiple "
                                 "of the 128-row FP8 block (MoE experts)")
    assert set(report.blocked) == {4, 8}


def test_group_schemes_need_whole_groups_per_gpu_on_row_parallel_layers():
    tensors = {"model.layers.0.self_attn.o_proj.weight": (H, 384), "model.layers.0.mlp.up_proj.weight": (384, H),
               "model.layers.0.mlp.gate_proj.weight": (384, H)}
    report = _plan(tensors, "W4A16").tensor_parallel
    assert report.loads == (1,)
    assert report.blocked[2] == "model.layers.0.self_attn.o_proj: 192 input columns per GPU are not whole groups of 128"
    # FP8_DYNAMIC (channels) splits anywhere the shapes divide
    assert _plan(tensors, "FP8_DYNAMIC").tensor_parallel.loads == (1, 2, 4, 8)


def test_merged_layers_need_whole_blocks_even_at_tp_1():
    # q/k/v are one GEMM in vLLM: every member but the last must fill whole blocks
    tensors = {"model.layers.0.self_attn.q_proj.weight": (192, H), "model.layers.0.self_attn.k_proj.weight": (128, H),
               "model.layers.0.self_attn.v_proj.weight": (128, H)}
    report = _plan(tensors, "FP8_BLOCK", {"num_key_value_heads": 1}).tensor_parallel
    assert report.loads == ()
    assert "q_proj: 192 output rows per GPU" in report.blocked[1]


def test_kv_heads_fewer_than_gpus_are_replicated():
    tensors = {"model.layers.0.self_attn.q_proj.weight": (4096, H), "model.layers.0.self_attn.k_proj.weight": (256, H),
               "model.layers.0.self_attn.v_proj.weight": (256, H)}
    assert _plan(tensors, "FP8_BLOCK", {"num_key_value_heads": 2}).tensor_parallel.loads == (1, 2, 4, 8)
    # with the head count unknown, the 256 rows split 8 ways are 32 rows: not a block
    assert 8 not in _plan(tensors, "FP8_BLOCK", {}).tensor_parallel.loads


def test_tp_refuses_a_plan_that_cannot_load_and_the_plan_says_where_it_does():
    with pytest.raises(TensorParallelError, match=r"tensor parallel size 4: model\.layers\.0\.mlp\.experts\.0\."
                       r"gate_proj: 192 output rows.*It loads at TP 1, 2;"):
        _plan(EXPERTS, "FP8_BLOCK", tp=4)
    assert _plan(EXPERTS, "FP8_BLOCK", tp=2).tensor_parallel.loads == (1, 2)
    assert "| tensor parallel | loads at TP 1, 2; TP 4: " in _plan(EXPERTS, "FP8_BLOCK").to_markdown()
    with pytest.raises(InvalidOptionError, match="tp=0"):
        make_job("o/m", "FP8_BLOCK", tp=0)


def test_cli_tp_refuses_before_writing(tmp_path, capsys):
    from factory import make_checkpoint

    src = make_checkpoint(tmp_path / "src", "llama")
    out = tmp_path / "out"
    assert cli_main(["quantize", str(src), str(out), "--scheme", "FP8_BLOCK", "--tp", "64"]) != 0
    assert "tensor parallel size 64" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("leaf", ["qkv_proj", "query_key_value"])
def test_a_stored_qkv_tensor_splits_into_vllms_q_k_v_parts(leaf):
    """Phi-3's qkv_proj and Falcon's query_key_value are one tensor; vLLM loads them into a
    QKVParallelLinear with parts [q, k, v], and each but v must fill whole blocks at TP 1."""
    config = {"num_attention_heads": 4, "num_key_value_heads": 2}  # head_dim 32: q 128, k 64, v 64 rows
    report = _plan({f"model.layers.0.self_attn.{leaf}.weight": (256, H)}, "FP8_BLOCK", config).tensor_parallel
    assert report.loads == ()
    assert report.blocked[1] == (f"model.layers.0.self_attn.{leaf}: 64 output rows per GPU are not a multiple of the "
                                 "128-row FP8 block")
    wide = {"num_attention_heads": 32, "num_key_value_heads": 8}  # head_dim 128: q 4096, k 1024, v 1024
    assert _plan({f"m.layers.0.attn.{leaf}.weight": (6144, 4096)}, "FP8_BLOCK", wide).tensor_parallel.loads == (1, 2, 4, 8)
    # Phi-3's stored gate_up_proj is [gate, up]
    assert _plan({"model.layers.0.mlp.gate_up_proj.weight": (2 * 192, H)}, "FP8_BLOCK").tensor_parallel.loads == ()
