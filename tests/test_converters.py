"""Quantized sources: the FP8-block dequantize kernel and source-format detection,
against compressed-tensors' own converters (``compressed_tensors.entrypoints.convert``)."""

from __future__ import annotations

import json

import pytest
import torch
from compressed_tensors.entrypoints.convert import (
    AutoAWQConverter,
    CompressedTensorsDequantizer,
    FP8BlockDequantizer,
    ModelOptNvfp4Converter,
)
from reference import preset, reference_quantize
from safetensors.torch import save_file

from ptq_core import numerics
from ptq_core.sources.detect import detect_source
from ptq_core.errors import CheckpointError, TensorShapeError, UnsupportedSourceError
from ptq_core.numerics import dequantize_fp8_block, quantize_weight
from ptq_core.schemes import resolve_config, weight_spec


def raw(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def fp8_block_weight(shape, block=(128, 128), seed=0, fp8=torch.float8_e4m3fn, scale_dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    weight = (torch.randn(shape, generator=gen) * 64).to(fp8)
    scale = (torch.rand((-(-shape[0] // block[0]), -(-shape[1] // block[1])), generator=gen) * 1e-3).to(scale_dtype)
    return weight, scale


def reference_dequantize(weight, scale, dtype, block=(128, 128)):
    tensors = {"m.weight": weight, "m.weight_scale_inv": scale}
    return FP8BlockDequantizer(weight_block_size=block, dtype=dtype).process(tensors)["m.weight"]


# --------------------------------------------------------------------------- dequantize_fp8_block


@pytest.mark.parametrize("shape", [(256, 256), (576, 200), (129, 129), (1, 5), (300, 384)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_fp8_block_dequantize_matches_reference(shape, dtype):
    """Whole and ragged blocks (DeepSeek's 576-row kv_a_proj_with_mqa), every output dtype."""
    weight, scale = fp8_block_weight(shape, seed=shape[0])
    ours = dequantize_fp8_block(weight, scale, dtype)
    ref = reference_dequantize(weight, scale, dtype)
    assert ours.dtype == ref.dtype == dtype and tuple(ours.shape) == tuple(ref.shape) == shape
    assert torch.equal(raw(ours), raw(ref))


@pytest.mark.parametrize("fp8,scale_dtype,block", [
    (torch.float8_e5m2, torch.float32, (128, 128)),
    (torch.float8_e4m3fn, torch.bfloat16, (128, 128)),
    (torch.float8_e4m3fn, torch.float32, (64, 32)),
])
def test_fp8_block_dequantize_other_formats(monkeypatch, fp8, scale_dtype, block):
    """E5M2 weights, bf16 scales, other block sizes, and many row chunks."""
    monkeypatch.setattr(numerics.scales, "_CHUNK_ELEMS", 4096)
    weight, scale = fp8_block_weight((200, 136), block, seed=3, fp8=fp8, scale_dtype=scale_dtype)
    ours = dequantize_fp8_block(weight, scale, torch.bfloat16, block=block)
    assert torch.equal(raw(ours), raw(reference_dequantize(weight, scale, torch.bfloat16, block)))


@pytest.mark.parametrize("block", [(1, 1), (3, 7), (200, 1), (1, 136), (512, 512)])
def test_fp8_block_dequantize_odd_blocks_match_reference(monkeypatch, block):
    """Blocks of one row or column, ragged in both dimensions, and larger than the weight
    (the reference pads: one block over the whole dimension), over many row chunks."""
    monkeypatch.setattr(numerics.scales, "_CHUNK_ELEMS", 1000)
    weight, scale = fp8_block_weight((200, 136), block, seed=5)
    ours = dequantize_fp8_block(weight, scale, torch.bfloat16, block=block)
    assert torch.equal(raw(ours), raw(reference_dequantize(weight, scale, torch.bfloat16, block)))


@pytest.mark.parametrize("block", [(2**22, 1), (2**40, 1), (1, 2**40)])
def test_fp8_block_dequantize_of_a_huge_block_allocates_only_the_weight(block):
    """A block far larger than the weight is one block over that whole dimension: the decode
    broadcasts its scales and never makes block x columns (the old repeat_interleave took
    8.5 GB for [2^22, 1] on a small weight, and raised RuntimeError for [2^40, 1])."""
    weight, scale = fp8_block_weight((64, 4096), block, seed=2)  # [2^22, 1] made 64 GiB here
    want = reference_dequantize(weight, scale, torch.bfloat16, (min(block[0], 64), min(block[1], 4096)))
    ours = dequantize_fp8_block(weight, scale, torch.bfloat16, block=block)
    assert torch.equal(raw(ours), raw(want))


def test_fp8_block_dequantize_into_a_buffer():
    weight, scale = fp8_block_weight((130, 260))
    out = torch.empty((130, 260), dtype=torch.bfloat16)
    assert dequantize_fp8_block(weight, scale, torch.bfloat16, out=out) is out
    assert torch.equal(raw(out), raw(reference_dequantize(weight, scale, torch.bfloat16)))


def test_fp8_block_scale_shape_is_checked():
    weight, scale = fp8_block_weight((256, 256))
    with pytest.raises(TensorShapeError, match=r"^its weight_scale_inv has shape \[1, 2\], but a \[256, 256\] weight in 128x128 blocks needs \[2, 2\]"):
        dequantize_fp8_block(weight, scale[:1], torch.bfloat16)
    with pytest.raises(CheckpointError, match=r"^its dtype is torch.bfloat16, not float8"):
        dequantize_fp8_block(weight.to(torch.bfloat16), scale, torch.bfloat16)


@pytest.mark.parametrize("scheme", ["NVFP4A16", "W4A16", "FP8_BLOCK"])
def test_fp8_block_source_requantized_matches_reference(scheme):
    """The whole path on one weight: compressed-tensors' dequantizer then its reference quantize,
    against ours."""
    weight, scale = fp8_block_weight((576, 256), seed=9)
    resolved = resolve_config(scheme)
    (group, s), = resolved.groups
    ours = quantize_weight(dequantize_fp8_block(weight, scale, torch.bfloat16), weight_spec(s, resolved.formats[group]))
    ref = reference_quantize(reference_dequantize(weight, scale, torch.bfloat16), preset(scheme))
    assert set(ours) == set(ref)
    for k in ref:
        assert torch.equal(raw(ours[k]), raw(ref[k])), k


# --------------------------------------------------------------------------- detect_source


def write_checkpoint(folder, tensors: dict[str, torch.Tensor], quantization_config: dict | None):
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    if quantization_config is not None:
        config["quantization_config"] = quantization_config
    (folder / "config.json").write_text(json.dumps(config))
    return config


def fp8_block_checkpoint(folder):
    """DeepSeek-style: FP8 attention/MLP and MLA projections with 128x128 scales; bf16 norms,
    embeddings, router and lm_head (no scale)."""
    tensors = {"model.embed_tokens.weight": torch.zeros(64, 256, dtype=torch.bfloat16),
               "lm_head.weight": torch.zeros(64, 256, dtype=torch.bfloat16),
               "model.layers.0.input_layernorm.weight": torch.ones(256, dtype=torch.bfloat16),
               "model.layers.0.mlp.gate.weight": torch.zeros(8, 256, dtype=torch.bfloat16)}
    for i, (module, shape) in enumerate([("self_attn.q_a_proj", (192, 256)), ("self_attn.kv_a_proj_with_mqa", (576, 256)),
                                         ("self_attn.o_proj", (256, 256)), ("mlp.experts.0.gate_proj", (128, 256))]):
        w, s = fp8_block_weight(shape, seed=i)
        tensors[f"model.layers.0.{module}.weight"] = w
        tensors[f"model.layers.0.{module}.weight_scale_inv"] = s
    quant = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
    return write_checkpoint(folder, tensors, quant), tensors


def assert_same_dependencies(plan, names, reference_dependencies):
    """Every tensor: our plan's dependencies are the reference converter's ``get_dependencies``."""
    ours = {d.tensor: set(d.dependencies) for d in plan.dequantize}
    for name in names:
        assert ours.get(name, set()) == reference_dependencies(name), name


def test_fp8_block_source_is_detected_like_the_reference(tmp_path):
    config, tensors = fp8_block_checkpoint(tmp_path / "src")
    plan = detect_source(config, tensors)
    reference = FP8BlockDequantizer.from_pretrained(str(tmp_path / "src"))
    assert plan.format.name == "fp8-block" and plan.format.block == (128, 128)
    assert plan.format.summary == "FP8 blocks (128x128), dequantized in memory"
    assert {d.module for d in plan.dequantize} == set(reference._checkpoint_targets)
    assert_same_dependencies(plan, tensors, reference.get_dependencies)
    assert plan.by_output["model.layers.0.self_attn.o_proj.weight"].tensor == "model.layers.0.self_attn.o_proj.weight"
    assert plan.consumed == {n for n in tensors if n.endswith((".weight_scale_inv",)) or
                             n.removesuffix(".weight") + ".weight_scale_inv" in tensors}


@pytest.mark.parametrize("scheme", ["W4A16_ASYM", "FP8_DYNAMIC", "NVFP4A16", "W4A16"])
def test_compressed_tensors_source_is_detected_like_the_reference(tmp_path, scheme):
    resolved = resolve_config(scheme, ignore=["lm_head"])
    tensors = {"lm_head.weight": torch.zeros(64, 256, dtype=torch.bfloat16),
               "model.norm.weight": torch.ones(256, dtype=torch.bfloat16)}
    for i, module in enumerate(["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"]):
        weight = (torch.randn(128, 256, generator=torch.Generator().manual_seed(i)) * 0.02).to(torch.bfloat16)
        tensors.update({f"{module}.{k}": v for k, v in reference_quantize(weight, preset(scheme)).items()})
    config = write_checkpoint(tmp_path / "src", tensors, resolved.quantization_config_dict())
    plan = detect_source(config, tensors)
    assert plan.format.name == "compressed-tensors" and len(plan.dequantize) == 2
    # the reference answers from the name alone: for a naive format (root "weight") it also lists a
    # "weight_scale" for unquantized weights such as norms, which do not have one; compare where it has
    quantized = [n for n in tensors if n.rpartition(".")[0] + ".weight_scale" in tensors]
    assert_same_dependencies(plan, quantized, CompressedTensorsDequantizer(str(tmp_path / "src")).get_dependencies)
    assert not any(d.tensor == "model.norm.weight" for d in plan.dequantize)
    assert {d.output for d in plan.dequantize} == {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"}


def test_modelopt_nvfp4_source_is_detected_like_the_reference():
    names = ["lm_head.weight", "model.norm.weight"]
    for module in ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj"):
        names += [f"{module}.{p}" for p in ("weight", "weight_scale", "weight_scale_2", "input_scale")]
    plan = detect_source({"quantization_config": {"quant_method": "modelopt", "quant_algo": "NVFP4"}}, names)
    assert plan.format.name == "modelopt-nvfp4"
    assert_same_dependencies(plan, names, ModelOptNvfp4Converter(targets=[r"re:.*proj$"]).get_dependencies)


@pytest.mark.parametrize("zero_point", [True, False])
def test_awq_source_is_detected_like_the_reference(zero_point):
    quant = {"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm", "zero_point": zero_point,
             "modules_to_not_convert": ["visual"]}
    names = ["lm_head.qweight", "lm_head.scales", "lm_head.qzeros", "model.norm.weight"]
    for module in ("model.layers.0.self_attn.q_proj", "model.visual.proj", "model.layers.1.mlp.down_proj"):
        names += [f"{module}.qweight", f"{module}.scales"] + ([f"{module}.qzeros"] if zero_point else [])
    plan = detect_source({"quantization_config": quant}, names)
    assert plan.format.name == "awq" and plan.format.group_size == 128 and plan.format.zero_point is zero_point
    assert {d.module for d in plan.dequantize} == {"model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"}
    assert_same_dependencies(plan, names, AutoAWQConverter.from_autoawq_config(quant).get_dependencies)


def test_dense_source():
    plan = detect_source({"model_type": "llama"}, ["model.layers.0.self_attn.q_proj.weight"])
    assert plan.format.name == "dense" and not plan.format.is_quantized and plan.dequantize == ()


@pytest.mark.parametrize("quant,message", [
    ({"quant_method": "gptq", "bits": 4}, r"^The source is quantized with GPTQ \(quant_method 'gptq'\), which ptq-hub cannot dequantize"),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, r"^The source is quantized with bitsandbytes .*unquantized \(BF16/F16\) release"),
    ({"quant_method": "mxfp4"}, r"quantized with MXFP4 \(gpt-oss\)"),
    ({"quant_method": "somethingnew"}, r"quantized with somethingnew \(quant_method 'somethingnew'\)"),
    ({"quant_method": "fp8", "activation_scheme": "static"}, r"^The source is per-tensor FP8 \(quant_method 'fp8' without weight_block_size\)"),
    ({"quant_method": "awq", "bits": 4, "version": "gemv"}, r"^The source is AWQ 4-bit 'gemv'; ptq-hub converts 4-bit GEMM AWQ only"),
    ({"quant_method": "modelopt", "quant_algo": "FP8"}, r"^The source is ModelOpt FP8; ptq-hub converts ModelOpt NVFP4 only"),
    ({"quant_method": "compressed-tensors", "sparsity_config": {"format": "sparse-24-bitmask"}},
     r"^The source is compressed-tensors with 'sparse-24-bitmask' sparsity, which ptq-hub cannot decompress"),
    ({"quant_method": "compressed-tensors", "transform_config": {"config_groups": {"R1": {"type": "hadamard"}}}},
     r"^The source is compressed-tensors with a transform_config \(rotated weights\)"),
])
def test_unsupported_sources_are_refused_by_name(quant, message):
    with pytest.raises(UnsupportedSourceError, match=message):
        detect_source({"quantization_config": quant}, ["model.layers.0.self_attn.q_proj.weight"])


@pytest.mark.parametrize("names,message", [
    (["a.q_proj.weight"], r"^config.json says FP8 blocks, but no tensor is named '\*.weight_scale_inv'"),
    (["a.q_proj.weight_scale_inv"], r"^a.q_proj.weight_scale_inv has no a.q_proj.weight to dequantize"),
])
def test_inconsistent_fp8_block_sources_are_refused(names, message):
    quant = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    with pytest.raises(CheckpointError, match=message):
        detect_source({"quantization_config": quant}, names)
