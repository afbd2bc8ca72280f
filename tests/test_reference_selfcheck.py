"""Sanity checks of tests/reference.py (the compressed-tensors reference path) and of the
tests/factory.py expert layouts it is applied to. Fast: CPU, tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from factory import load_tensors, make_checkpoint
from reference import (
    data_free_presets,
    global_scale_from_absmax,
    group_absmax,
    observe_min_max,
    preset,
    reference_decompress,
    reference_format,
    reference_quantize,
    reference_quantize_group,
    reference_split_experts,
    split_fused_moe_experts,
)

N, K = 256, 256


def _weight(n=N, k=K, dtype=torch.bfloat16, seed=0, std=0.02):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn((n, k), generator=g) * std).to(dtype)


def _relerr(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


# DESIGN.md's output-format table: name -> (format, {tensor: (dtype, shape)}, max rel. error)
EXPECTED = {
    "FP8_DYNAMIC": ("float-quantized", {
        "weight": (torch.float8_e4m3fn, (N, K)), "weight_scale": (torch.bfloat16, (N, 1))}, 0.05),
    "FP8_BLOCK": ("float-quantized", {
        "weight": (torch.float8_e4m3fn, (N, K)),
        "weight_scale": (torch.bfloat16, (math.ceil(N / 128), math.ceil(K / 128)))}, 0.05),
    "NVFP4A16": ("nvfp4-pack-quantized", {
        "weight_packed": (torch.uint8, (N, K // 2)), "weight_scale": (torch.float8_e4m3fn, (N, K // 16)),
        "weight_global_scale": (torch.float32, (1,))}, 0.15),
    "MXFP4A16": ("mxfp4-pack-quantized", {
        "weight_packed": (torch.uint8, (N, K // 2)), "weight_scale": (torch.uint8, (N, K // 32))}, 0.2),
    "MXFP4": ("mxfp4-pack-quantized", {
        "weight_packed": (torch.uint8, (N, K // 2)), "weight_scale": (torch.uint8, (N, K // 32))}, 0.2),
    "MXFP8A16": ("mxfp8-quantized", {
        "weight": (torch.float8_e4m3fn, (N, K)), "weight_scale": (torch.uint8, (N, K // 32))}, 0.05),
    "W4A16": ("pack-quantized", {
        "weight_packed": (torch.int32, (N, K * 4 // 32)), "weight_scale": (torch.bfloat16, (N, K // 128)),
        "weight_shape": (torch.int64, (2,))}, 0.15),
    "W4A16_ASYM": ("pack-quantized", {
        "weight_packed": (torch.int32, (N, K * 4 // 32)), "weight_scale": (torch.bfloat16, (N, K // 128)),
        "weight_zero_point": (torch.int32, (N * 4 // 32, K // 128)),  # packed along dim 0
        "weight_shape": (torch.int64, (2,))}, 0.15),
    "W8A16": ("pack-quantized", {
        "weight_packed": (torch.int32, (N, K * 8 // 32)), "weight_scale": (torch.bfloat16, (N, K // 128)),
        "weight_shape": (torch.int64, (2,))}, 0.02),
    "W8A8": ("int-quantized", {
        "weight": (torch.int8, (N, K)), "weight_scale": (torch.bfloat16, (N, 1))}, 0.02),
    "W4AFP8": ("int-quantized", {  # FP8 activations rule out pack-quantized
        "weight": (torch.int8, (N, K)), "weight_scale": (torch.bfloat16, (N, K // 128))}, 0.15),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_documented_outputs(name):
    fmt, tensors, tol = EXPECTED[name]
    scheme = preset(name)
    w = _weight()
    out = reference_quantize(w, scheme)
    assert reference_format(scheme).value == fmt
    assert scheme.format is None, "the caller's scheme must not be mutated"
    assert set(out) == set(tensors)
    for key, (dtype, shape) in tensors.items():
        assert out[key].dtype == dtype, key
        assert tuple(out[key].shape) == shape, key
        assert out[key].device.type == "cpu"
    if "weight_shape" in out:
        assert out["weight_shape"].tolist() == [N, K]
    dq = reference_decompress(out, scheme)
    assert dq.shape == w.shape
    assert _relerr(dq, w) < tol


@pytest.mark.parametrize("name", data_free_presets())
def test_every_data_free_preset_runs_on_cpu(name):
    scheme = preset(name)
    w = _weight(128, 256, seed=3)
    out = reference_quantize(w, scheme)
    dq = reference_decompress(out, scheme)
    bits = scheme.weights.num_bits
    assert _relerr(dq, w) < {2: 0.7, 3: 0.35}.get(bits, 0.2)


def test_data_free_preset_list():
    names = set(data_free_presets())
    for n in ("FP8_DYNAMIC", "FP8_BLOCK", "NVFP4A16", "MXFP4A16", "MXFP4", "MXFP8A16", "MXFP8",
              "W4A16", "W4A16_ASYM", "W8A16", "W8A8", "INT8", "W4AFP8"):
        assert n in names
    assert "FP8" not in names  # static input activations
    assert "NVFP4" not in names  # DynamicType.LOCAL input: calibrated input global scale
    assert "UNQUANTIZED" not in names


def test_fp8_dynamic_numerics_divide_in_weight_dtype():
    """scale = amax/448 in bf16; q = fp8(clamp(w / scale)) with the division in bf16."""
    w = _weight(seed=1)
    out = reference_quantize(w, preset("FP8_DYNAMIC"))
    amax = w.abs().amax(dim=1, keepdim=True)
    scale = amax / torch.tensor(448.0, dtype=torch.bfloat16)
    assert torch.equal(out["weight_scale"], scale)
    q = (w / scale).clamp(-448, 448).to(torch.float8_e4m3fn)
    assert torch.equal(out["weight"].view(torch.uint8), q.view(torch.uint8))


def test_w4a16_scale_is_absmax_over_7_5():
    w = _weight(seed=2)
    out = reference_quantize(w, preset("W4A16"))
    amax = w.unflatten(-1, (-1, 128)).abs().amax(-1)
    assert torch.equal(out["weight_scale"], amax / torch.tensor(7.5, dtype=torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_scale_dtype_follows_weight_dtype(dtype):
    w = _weight(dtype=dtype)
    assert reference_quantize(w, preset("FP8_BLOCK"))["weight_scale"].dtype == dtype
    nv = reference_quantize(w, preset("NVFP4A16"))
    assert nv["weight_scale"].dtype == torch.float8_e4m3fn
    assert nv["weight_global_scale"].dtype == torch.float32


def test_fp8_block_odd_rows_and_cols():
    w = _weight(160, 200)  # rows and K not multiples of 128 (DeepSeek kv_a_proj-like)
    out = reference_quantize(w, preset("FP8_BLOCK"))
    # (compressed-tensors itself returns a non-contiguous column slice here; reference.py
    # makes it contiguous so it can be written)
    assert out["weight"].shape == (160, 200) and out["weight"].is_contiguous()
    assert out["weight_scale"].shape == (2, 2)
    assert _relerr(reference_decompress(out, preset("FP8_BLOCK")), w) < 0.05


def test_group_strategy_needs_divisible_k():
    with pytest.raises(ValueError):
        reference_quantize(_weight(128, 200), preset("W4A16"))


def test_nvfp4_global_scale_rounded_in_weight_dtype():
    w = _weight(seed=4)
    a = group_absmax([w], preset("NVFP4A16"))
    assert a.dtype == torch.bfloat16 and a == w.abs().max()
    gs = global_scale_from_absmax(a)
    assert gs.dtype == torch.float32 and gs.shape == (1,)
    assert gs.item() == (2688.0 / a.float()).to(torch.bfloat16).float().item()
    assert torch.equal(reference_quantize(w, preset("NVFP4A16"))["weight_global_scale"], gs)


def test_nvfp4_fused_group_shares_global_scale():
    scheme = preset("NVFP4A16")
    q, k, v = _weight(256, K, seed=5), _weight(128, K, seed=6, std=0.05), _weight(128, K, seed=7)
    outs = reference_quantize_group({"q": q, "k": k, "v": v}, scheme)
    gs = {n: o["weight_global_scale"] for n, o in outs.items()}
    assert torch.equal(gs["q"], gs["k"]) and torch.equal(gs["q"], gs["v"])
    expect = global_scale_from_absmax(torch.stack([q.abs().max(), k.abs().max(), v.abs().max()]).max())
    assert torch.equal(gs["q"], expect)
    # alone, q gets a different (larger) global scale than inside the group
    assert reference_quantize(q, scheme)["weight_global_scale"] > gs["q"]


def test_observer_shapes():
    w = _weight(160, 256)
    for name, shape in (("FP8_DYNAMIC", (160, 1)), ("FP8_BLOCK", (2, 2)), ("W4A16", (160, 2)),
                        ("NVFP4A16", (160, 16)), ("MXFP4A16", (160, 8))):
        mn, mx = observe_min_max(w, preset(name).weights)
        assert mn.shape == shape and mx.shape == shape and mx.dtype == w.dtype, name


def test_split_experts_mirror():
    e, i, h = 3, 4, 8
    gu = torch.arange(e * 2 * i * h, dtype=torch.float32).reshape(e, 2 * i, h)
    dn = torch.arange(e * h * i, dtype=torch.float32).reshape(e, h, i)
    s = reference_split_experts("model.layers.0.mlp.experts.gate_up_proj", gu)
    assert list(s) == [f"model.layers.0.mlp.experts.{x}.{p}.weight" for x in range(e) for p in ("gate_proj", "up_proj")]
    assert torch.equal(s["model.layers.0.mlp.experts.1.gate_proj.weight"], gu[1, :i])
    assert torch.equal(s["model.layers.0.mlp.experts.1.up_proj.weight"], gu[1, i:])
    d = reference_split_experts("model.layers.0.mlp.experts.down_proj", dn)
    assert torch.equal(d["model.layers.0.mlp.experts.2.down_proj.weight"], dn[2])
    # 2-D tensors and everything else pass through untouched
    two_d = torch.zeros(4, 4)
    assert reference_split_experts("model.layers.0.mlp.down_proj.weight", two_d) == {
        "model.layers.0.mlp.down_proj.weight": two_d}


@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3"])
def test_split_of_fused_factory_checkpoint_equals_per_expert(tmp_path, arch):
    fused = load_tensors(make_checkpoint(tmp_path / "fused", arch, fused_experts=True))
    per_expert = load_tensors(make_checkpoint(tmp_path / "experts", arch))
    split = split_fused_moe_experts(fused)
    assert set(split) == set(per_expert)
    for n, t in per_expert.items():
        assert torch.equal(split[n], t), n


def test_split_of_fused_mixtral_gives_gate_up_names(tmp_path):
    # transformers-5 native Mixtral fused layout splits to gate_proj/up_proj (not w1/w3)
    fused = load_tensors(make_checkpoint(tmp_path / "fused", "mixtral", fused_experts=True))
    legacy = load_tensors(make_checkpoint(tmp_path / "legacy", "mixtral"))
    split = split_fused_moe_experts(fused)
    for layer in range(2):
        for e in range(4):
            pre = f"model.layers.{layer}"
            assert torch.equal(split[f"{pre}.mlp.experts.{e}.gate_proj.weight"],
                               legacy[f"{pre}.block_sparse_moe.experts.{e}.w1.weight"])
            assert torch.equal(split[f"{pre}.mlp.experts.{e}.up_proj.weight"],
                               legacy[f"{pre}.block_sparse_moe.experts.{e}.w3.weight"])
            assert torch.equal(split[f"{pre}.mlp.experts.{e}.down_proj.weight"],
                               legacy[f"{pre}.block_sparse_moe.experts.{e}.w2.weight"])
