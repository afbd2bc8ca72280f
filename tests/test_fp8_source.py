"""FP8-block sources (DeepSeek/Kimi/Qwen -FP8 releases) quantized without a dense copy on disk.

The oracle: compressed-tensors' own ``FP8BlockDequantizer`` turns the FP8 checkpoint into a
dense one, which then goes through the dense path (itself byte-identical to the reference,
see tests/core/test_pipeline.py). Our path dequantizes in memory, weight by weight, reading each
``weight_scale_inv`` from whichever shard holds it; the outputs must be the same bytes.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from compressed_tensors.entrypoints.convert.converters import FP8BlockDequantizer
from safetensors.torch import load_file, save_file

from factory import load_tensors, make_fp8_block_checkpoint, read_index, shard_files
from ptq_core import model_free_ptq
from ptq_core.cli import main
from ptq_core.errors import TensorShapeError, UnsupportedSourceError
from ptq_core.planner import plan_checkpoint

IGNORE = ["lm_head", "re:.*embed_tokens$", r"re:.*\.gate$"]


def dequantized_by_the_reference(src, dst):
    """compressed-tensors' FP8BlockDequantizer over every shard; scales dropped, config dense."""
    dst.mkdir()
    converter = FP8BlockDequantizer.from_pretrained(str(src))
    weight_map = {}
    for shard in shard_files(src):
        tensors = converter.process(load_file(str(shard)))
        tensors = {k: v for k, v in tensors.items() if not k.endswith("weight_scale_inv")}
        save_file(tensors, str(dst / shard.name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, shard.name))
    if (src / "model.safetensors.index.json").exists():
        (dst / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    config = json.loads((src / "config.json").read_text())
    del config["quantization_config"]
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def raw(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [("llama", {"shards": 2, "split_fused": True}), ("deepseek_v3", {"shards": 2, "split_fused": True}),
     ("qwen3_moe", {})],
)
@pytest.mark.parametrize("scheme", ["NVFP4A16", "W4A16"])
def test_fp8_block_source_matches_the_reference_converter(tmp_path, arch, kwargs, scheme):
    src = make_fp8_block_checkpoint(tmp_path / "src", arch, **kwargs)
    dense = dequantized_by_the_reference(src, tmp_path / "dense")
    model_free_ptq(src, tmp_path / "ours", scheme, ignore=IGNORE)
    model_free_ptq(dense, tmp_path / "want", scheme, ignore=IGNORE)
    got, want = load_tensors(tmp_path / "ours"), load_tensors(tmp_path / "want")
    assert got.keys() == want.keys()
    assert not any(k.endswith("weight_scale_inv") for k in got)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and torch.equal(raw(got[name]), raw(tensor)), name
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["quantization_config"] == json.loads((tmp_path / "want" / "config.json").read_text())["quantization_config"]
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"  # the fp8 config is replaced
    if kwargs.get("shards", 1) > 1:
        assert read_index(tmp_path / "ours")["weight_map"] == read_index(tmp_path / "want")["weight_map"]


def test_kept_fp8_weights_are_written_dense_and_the_plan_says_where_they_came_from(tmp_path, capsys):
    src = make_fp8_block_checkpoint(tmp_path / "src", "llama")
    assert main(["plan", str(src), "--scheme", "FP8_BLOCK", "--ignore", "re:.*o_proj$"]) == 0
    assert "source: FP8 blocks (128x128), dequantized in memory" in capsys.readouterr().out
    assert main(["quantize", str(src), str(tmp_path / "out"), "--scheme", "FP8_BLOCK", "--ignore", "re:.*o_proj$"]) == 0
    got = load_tensors(tmp_path / "out")
    o_proj = got["model.layers.0.self_attn.o_proj.weight"]
    assert o_proj.dtype == torch.bfloat16  # ignored: decoded, not copied as FP8 without its scale
    dense = dequantized_by_the_reference(src, tmp_path / "dense")
    assert torch.equal(raw(o_proj), raw(load_tensors(dense)["model.layers.0.self_attn.o_proj.weight"]))


def test_other_quantized_sources_are_refused_by_name(tmp_path):
    src = make_fp8_block_checkpoint(tmp_path / "src", "llama")
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedSourceError, match=r"quantized with GPTQ \(quant_method 'gptq'\)"):
        model_free_ptq(src, tmp_path / "out", "W4A16")
    assert not (tmp_path / "out").exists()


def test_a_scale_of_the_wrong_shape_is_refused_by_the_plan(tmp_path):
    """Found in planning, from the headers (a Hub job used to create the repo and stage shards first),
    naming the weight, its scale, the expected and the found shape."""
    src = make_fp8_block_checkpoint(tmp_path / "src", "llama")
    (shard,) = shard_files(src)
    tensors = load_file(str(shard))
    name = "model.layers.0.self_attn.q_proj.weight_scale_inv"
    tensors[name] = tensors[name][:1]
    save_file(tensors, str(shard), metadata={"format": "pt"})
    want = (rf"^{re.escape(name)} has shape \[1, \d+\], but its weight model\.layers\.0\.self_attn\.q_proj\.weight "
            r"\[\d+, \d+\] in 128x128 blocks needs \[\d+, \d+\]")
    with pytest.raises(TensorShapeError, match=want):
        plan_checkpoint(src, "W4A16")
    with pytest.raises(TensorShapeError, match=want):
        model_free_ptq(src, tmp_path / "out", "W4A16", ignore=IGNORE)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("block", [[2**22, 1], [2**24, 1], [2**40, 1]])
def test_an_absurd_weight_block_size_is_refused_by_the_plan(tmp_path, block):
    """[2^22, 1] on a small model took 8.5 GB and 126 s; [2^24, 1] and [2^40, 1] ended in untyped
    RuntimeErrors. A block larger than a weight is one block over that dimension, so it is legal
    (see test_converters), but one that pads the weight far beyond its size is no real checkpoint's."""
    src = make_fp8_block_checkpoint(tmp_path / "src", "llama")
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"]["weight_block_size"] = block
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(TensorShapeError, match=rf"^weight_block_size \[{block[0]}, 1\] is absurd for model\.\S+\.weight \[\d+, \d+\]"):
        plan_checkpoint(src, "W4A16")


def test_the_plans_ram_peak_counts_the_fp8_decode(tmp_path):
    """Besides the dense weight, the decode holds the FP8 weight, its scales and a float32 chunk:
    an FP8-block source's peak is above its dense twin's (they were counted the same)."""
    from ptq_core.parts import Budgets, estimate_footprint

    src = make_fp8_block_checkpoint(tmp_path / "src", "llama")
    dense = dequantized_by_the_reference(src, tmp_path / "dense")
    budgets = Budgets(disk=1 << 40, ram=1 << 40, window=0, workers=1)
    peaks = []
    for folder in (src, dense):
        plan = plan_checkpoint(folder, "W4A16", ignore=IGNORE)
        peaks.append(estimate_footprint(plan, budgets, sorted(set(plan.weight_map().values()))).peak_ram)
    biggest = max(i.shape[0] * i.shape[1] for i in plan.quantized)
    assert peaks[0] >= peaks[1] + 2 * biggest, peaks  # the largest unit counts twice, its FP8 bytes with it
