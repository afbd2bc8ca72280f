"""Bad inputs: each gets its own error type and a message naming the file / tensor / value,
and leaves nothing behind (no output folder, no hidden ``.NAME.ptq-tmp-*`` sibling)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from compressed_tensors.quantization import QuantizationConfig
from factory import (
    TINY_LLAMA_DIMS,
    corrupt_header_json,
    corrupt_header_length,
    corrupt_index_missing_shard,
    corrupt_index_missing_tensor,
    corrupt_inject_nan,
    corrupt_truncate_shard,
    load_tensors,
    make_checkpoint,
)
from reference import preset

from ptq_core import model_free_ptq
from ptq_core.errors import (
    CalibrationRequiredError,
    CheckpointError,
    CorruptCheckpointError,
    ExpertLayoutError,
    InvalidIgnoreError,
    InvalidOptionError,
    MissingShardError,
    NonFiniteWeightError,
    NoSafetensorsError,
    OutputExistsError,
    OutputLocationError,
    PtqError,
    SchemeNotSupportedError,
    TensorShapeError,
)

DIMS = TINY_LLAMA_DIMS
SHARD2 = "model-00002-of-00003.safetensors"


@pytest.fixture
def src(tmp_path) -> Path:
    """A 3-shard llama with q/k/v and gate/up split across shards."""
    return make_checkpoint(tmp_path / "src", "llama", shards=3, split_fused=True, **DIMS)


def leftovers(out: Path) -> list[str]:
    """The output folder and any hidden work / old siblings of it."""
    found = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.ptq-")]
    if out.exists():
        found.append(out.name)
    return found


def fails(exc_type, match: str, src, out: Path, **kwargs):
    """Run model_free_ptq expecting ``exc_type`` with ``match``; nothing may be left behind."""
    kwargs.setdefault("scheme", "FP8_BLOCK")
    with pytest.raises(exc_type, match=match) as info:
        model_free_ptq(src, out, **kwargs)
    assert isinstance(info.value, PtqError)
    assert leftovers(out) == []
    return info.value


# --------------------------------------------------------------------------- schemes


def test_unknown_scheme(src, tmp_path):
    err = fails(SchemeNotSupportedError, r"Unknown scheme 'FP9_TURBO'.*FP8_BLOCK", src, tmp_path / "out",
                scheme="FP9_TURBO")
    assert isinstance(err, ValueError)


@pytest.mark.parametrize("scheme,alternative", [("FP8", "FP8_DYNAMIC"), ("NVFP4", "NVFP4A16")])
def test_calibration_schemes_name_the_data_free_alternative(src, tmp_path, scheme, alternative):
    fails(CalibrationRequiredError, rf"{scheme} needs .*calibration data\. Pick {alternative}", src,
          tmp_path / "out", scheme=scheme)


def test_config_with_static_activation_group(src, tmp_path):
    config = QuantizationConfig(config_groups={
        "weights_only": preset("W4A16", targets=[r"re:.*mlp\..*"]),
        "static_fp8": preset("FP8", targets=[r"re:.*self_attn\..*"]),
    })
    fails(CalibrationRequiredError, r"static_fp8 needs static input activation scales, which needs calibration data",
          src, tmp_path / "out", scheme=None, config=config)


def test_config_with_kv_cache_scheme(src, tmp_path):
    config = QuantizationConfig(config_groups={"g": preset("FP8_DYNAMIC")},
                                kv_cache_scheme=preset("FP8").input_activations)
    fails(CalibrationRequiredError,
          r"The config quantizes the KV cache, which needs calibration data; drop kv_cache_scheme",
          src, tmp_path / "out", scheme=None, config=config)


@pytest.mark.parametrize("kwargs,match", [
    (dict(scheme="FP8_BLOCK", config=QuantizationConfig(config_groups={"g": preset("W4A16")})),
     r"Give either `scheme` or `config`, not both"),
    (dict(scheme=None), r"No scheme given; pass a preset such as scheme='FP8_BLOCK'"),
    (dict(scheme=42), r"scheme must be a preset name or a QuantizationScheme, not int"),
])
def test_scheme_and_config_arguments(src, tmp_path, kwargs, match):
    fails(SchemeNotSupportedError, match, src, tmp_path / "out", **kwargs)


def test_bad_ignore_regex(src, tmp_path):
    fails(InvalidIgnoreError, re.escape("'re:model.(layers'") + r" is not a valid regular expression", src,
          tmp_path / "out", ignore=["lm_head", "re:model.(layers"])


def test_empty_ignore_entry(src, tmp_path):
    fails(InvalidIgnoreError, r"ignore entry '' must be a non-empty module name", src, tmp_path / "out",
          ignore=["lm_head", ""])


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("scheme,group", [("W4A16", 128), ("NVFP4A16", 16), ("MXFP4A16", 32)])
def test_columns_not_divisible_by_group_size(tmp_path, scheme, group):
    odd = {"model.layers.0.mlp.odd_proj.weight": torch.zeros(64, 200, dtype=torch.bfloat16)}
    src = make_checkpoint(tmp_path / "src", "llama", extra_tensors=odd, **DIMS)
    fails(TensorShapeError, rf"model\.layers\.0\.mlp\.odd_proj\.weight: 200 columns are not divisible by the "
          rf"group size {group}", src, tmp_path / "out", scheme=scheme)
    # the same weight is fine once ignored, and FP8_BLOCK pads it
    model_free_ptq(src, tmp_path / "ok", scheme=scheme, ignore=["model.layers.0.mlp.odd_proj"])
    model_free_ptq(src, tmp_path / "ok-block", scheme="FP8_BLOCK")


def test_fused_experts_of_an_unknown_family_are_refused(tmp_path):
    """A 3-D tensor named like fused experts in a model whose config says no MoE family: never split by guess."""
    bad = {"model.layers.0.mlp.experts.gate_up_proj": torch.zeros(2, 129, 128, dtype=torch.bfloat16)}
    src = make_checkpoint(tmp_path / "src", "llama", extra_tensors=bad, **DIMS)
    fails(ExpertLayoutError, r"model\.layers\.0\.mlp\.experts\.gate_up_proj: fused MoE experts \[2, 129, 128\] "
          r"are not split, because model_type llama is not a MoE family", src, tmp_path / "out")


@pytest.mark.parametrize("dtype,st", [(torch.int8, "I8"), (torch.float8_e4m3fn, "F8_E4M3")])
def test_already_quantized_weight_is_refused(tmp_path, dtype, st):
    extra = {"model.layers.0.mlp.q8_proj.weight": torch.zeros(64, 128).to(dtype)}
    src = make_checkpoint(tmp_path / "src", "llama", extra_tensors=extra, **DIMS)
    fails(CheckpointError, rf"model\.layers\.0\.mlp\.q8_proj\.weight has dtype {st}; only BF16/F16/F32 weights "
          r"can be quantized.*Add 're:\.\*layers.*q8_proj\$' to ignore", src, tmp_path / "out")
    model_free_ptq(src, tmp_path / "ok", scheme="FP8_BLOCK", ignore=["model.layers.0.mlp.q8_proj"])
    assert torch.equal(load_tensors(tmp_path / "ok")["model.layers.0.mlp.q8_proj.weight"].view(torch.uint8),
                       extra["model.layers.0.mlp.q8_proj.weight"].view(torch.uint8))


# --------------------------------------------------------------------------- corrupt checkpoints


def test_truncated_shard(src, tmp_path):
    corrupt_truncate_shard(src, 1)
    fails(CorruptCheckpointError, rf"{SHARD2}: tensor '.+' ends at byte \d+ .*truncated", src, tmp_path / "out")


def test_shard_shorter_than_header_length_field(src, tmp_path):
    corrupt_truncate_shard(src, 1, keep_bytes=5)
    fails(CorruptCheckpointError, rf"{SHARD2}: 5 bytes is too short to be a safetensors file", src,
          tmp_path / "out")


def test_corrupt_header_json(src, tmp_path):
    corrupt_header_json(src, 1)
    fails(CorruptCheckpointError, rf"{SHARD2}: the safetensors header is not valid JSON", src, tmp_path / "out")


def test_impossible_header_length(src, tmp_path):
    corrupt_header_length(src, 1)
    fails(CorruptCheckpointError, rf"{SHARD2}: header length \d+ does not fit a \d+-byte file", src,
          tmp_path / "out")


def test_header_length_over_the_limit_says_so(src, tmp_path):
    """A 101 MB header length is refused for safetensors' 100 MB limit, not as "does not fit a
    file" (the file may well be that large)."""
    corrupt_header_length(src, 1, extra=101_000_000)
    fails(CorruptCheckpointError, rf"{SHARD2}: header length [\d,]+ bytes is too large: safetensors allows at most "
          r"100,000,000", src, tmp_path / "out")


def test_corrupt_single_file_checkpoint(tmp_path):
    src = make_checkpoint(tmp_path / "src", "llama", **DIMS)
    corrupt_truncate_shard(src)
    fails(CorruptCheckpointError, r"model\.safetensors: tensor .* truncated", src, tmp_path / "out")


def test_index_names_missing_shard(src, tmp_path):
    name = corrupt_index_missing_shard(src)
    err = fails(MissingShardError, r"names shard\(s\) model-00099-of-00099\.safetensors that are not in", src,
                tmp_path / "out")
    assert isinstance(err, FileNotFoundError) and name


def test_index_names_tensor_not_in_shard(src, tmp_path):
    corrupt_index_missing_tensor(src)
    fails(MissingShardError, r"maps tensor 'model\.layers\.0\.mlp\.phantom_proj\.weight' to "
          r"model-00001-of-00003\.safetensors, but that shard does not contain it", src, tmp_path / "out")


def test_no_safetensors(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama"}))
    torch.save({"w": torch.zeros(2)}, src / "pytorch_model.bin")
    fails(NoSafetensorsError, r"No \*\.safetensors weights in .*pytorch_model\.bin", src, tmp_path / "out")


def test_source_folder_missing(tmp_path, monkeypatch):
    """A local path that is not there (and cannot be a Hub repo id: too many components) must
    give a PtqError naming it, not a crash. The endpoint points nowhere in case a download is tried."""
    import ptq_core.constants

    monkeypatch.setattr(ptq_core.constants, "HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tmp_path / "nope" / "really-not-here"
    with pytest.raises(PtqError, match=re.escape(f"'{missing}'")):
        model_free_ptq(missing, tmp_path / "out", scheme="FP8_BLOCK")
    assert leftovers(tmp_path / "out") == []


# --------------------------------------------------------------------------- non-finite weights


@pytest.mark.parametrize("scheme", ["FP8_BLOCK", "NVFP4A16", "W4A16_ASYM", "FP8_DYNAMIC"])
@pytest.mark.parametrize("inf", [False, True], ids=["nan", "inf"])
def test_non_finite_weight_is_named(src, tmp_path, scheme, inf):
    tensor = "model.layers.0.self_attn.k_proj.weight"  # an NVFP4 fused partner, in another shard than q
    corrupt_inject_nan(src, tensor, index=77, inf=inf)
    fails(NonFiniteWeightError, re.escape(tensor) + r" \(in model-0000\d-of-00003\.safetensors\) holds NaN or Inf",
          src, tmp_path / "out", scheme=scheme, max_workers=2)


def test_non_finite_in_fused_expert_tensor(tmp_path):
    src = make_checkpoint(tmp_path / "src", "qwen3_moe", fused_experts=True, hidden_size=128,
                          moe_intermediate_size=128, num_experts=2, num_attention_heads=2, num_key_value_heads=1,
                          head_dim=64, vocab_size=256, num_hidden_layers=1)
    # expert 1, gate half: flat index inside expert 1's first rows
    corrupt_inject_nan(src, "model.layers.0.mlp.experts.gate_up_proj", index=256 * 128 + 5)
    fails(NonFiniteWeightError, r"model\.layers\.0\.mlp\.experts\.1\.gate_proj\.weight .*holds NaN or Inf", src,
          tmp_path / "out", scheme="NVFP4A16")


def test_nan_in_ignored_weight_is_copied(src, tmp_path):
    corrupt_inject_nan(src, "lm_head.weight", index=3)
    out = tmp_path / "out"
    model_free_ptq(src, out, scheme="NVFP4A16", ignore=["lm_head"])
    before, after = load_tensors(src)["lm_head.weight"], load_tensors(out)["lm_head.weight"]
    assert torch.isnan(after.flatten()[3])
    assert torch.equal(before.view(torch.int16), after.view(torch.int16))


def test_failure_with_overwrite_keeps_previous_output(src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous run")
    corrupt_inject_nan(src, "model.layers.0.mlp.down_proj.weight")
    with pytest.raises(NonFiniteWeightError, match=r"model\.layers\.0\.mlp\.down_proj\.weight"):
        model_free_ptq(src, out, scheme="W4A16", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "previous run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


# --------------------------------------------------------------------------- output folder


def test_output_is_input(src, tmp_path):
    files = sorted(p.name for p in src.iterdir())
    with pytest.raises(OutputLocationError, match=r"is the input folder or inside it"):
        model_free_ptq(src, src, scheme="FP8_BLOCK", overwrite=True)
    assert sorted(p.name for p in src.iterdir()) == files
    assert [p.name for p in tmp_path.iterdir() if ".ptq-" in p.name] == []


def test_output_inside_input(src, tmp_path):
    fails(OutputLocationError, r"is the input folder or inside it", src, src / "quantized")
    with pytest.raises(OutputLocationError, match=r"is the input folder or inside it"):
        model_free_ptq(src, src / "a" / "b", scheme="FP8_BLOCK")
    assert not (src / "a").exists()


def test_output_contains_input(src, tmp_path):
    with pytest.raises(OutputLocationError, match=r"contains the input folder"):
        model_free_ptq(src, tmp_path, scheme="FP8_BLOCK", overwrite=True)
    assert (src / "config.json").is_file()
    assert [p.name for p in tmp_path.parent.iterdir() if ".ptq-" in p.name] == []


def test_output_not_empty_without_overwrite(src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    (out / "model.safetensors").write_bytes(b"not a model")
    with pytest.raises(OutputExistsError, match=r"out is not empty; pass overwrite=True") as info:
        model_free_ptq(src, out, scheme="FP8_BLOCK")
    assert isinstance(info.value, FileExistsError)
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "notes.md"]
    assert (out / "notes.md").read_text() == "mine"
    assert (out / "model.safetensors").read_bytes() == b"not a model"
    assert [p.name for p in tmp_path.iterdir() if ".ptq-" in p.name] == []


def test_output_is_a_file(src, tmp_path):
    out = tmp_path / "out"
    out.write_text("a file")
    with pytest.raises(OutputExistsError, match=r"exists and is not a folder"):
        model_free_ptq(src, out, scheme="FP8_BLOCK", overwrite=True)
    assert out.read_text() == "a file"


def test_empty_existing_output_is_fine(src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    model_free_ptq(src, out, scheme="FP8_BLOCK")
    assert (out / "model.safetensors.index.json").is_file()


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("workers", [0, -1, 1.5, "2.5", "many", None, True])
def test_bad_max_workers(src, tmp_path, workers):
    fails(InvalidOptionError, rf"max_workers={re.escape(repr(workers))} must be a whole number >= 1", src,
          tmp_path / "out", max_workers=workers)


@pytest.mark.parametrize("device,match", [
    ("tpu", r"Unknown device 'tpu'; use 'cpu', 'cuda' or 'cuda:N'"),
    ("gpu0", r"Unknown device 'gpu0'; use 'cpu', 'cuda' or 'cuda:N'"),
    ([], r"The device list is empty"),
    ("mps", r"Device 'mps' is not supported; use 'cpu', 'cuda' or 'cuda:N'"),
    ("xla", r"Device 'xla' is not supported; use 'cpu', 'cuda' or 'cuda:N'"),
])
def test_bad_device(src, tmp_path, device, match):
    fails(InvalidOptionError, match, src, tmp_path / "out", device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 1), ["cpu", "cuda"]])
def test_cuda_without_gpu(src, tmp_path, device):
    fails(InvalidOptionError, r"asked for, but no CUDA GPU is available; use 'cpu'", src, tmp_path / "out",
          device=device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_index_out_of_range(src, tmp_path):
    index = torch.cuda.device_count()
    fails(InvalidOptionError, rf"Device 'cuda:{index}' does not exist \({index} GPU\(s\)\)", src, tmp_path / "out",
          device=f"cuda:{index}")


def test_an_overflowing_scale_is_refused_naming_the_tensor(tmp_path):
    """W4A16_ASYM on +-3e38 weights: (max - min) / 15 overflows; the tensor is named, nothing written."""
    from safetensors.torch import save_file

    from ptq_core.errors import NonFiniteScaleError

    src = tmp_path / "src"
    src.mkdir()
    weight = torch.zeros(8, 128, dtype=torch.float32)
    weight[0, 0], weight[0, 1] = 3e38, -3e38
    save_file({"model.layers.0.mlp.down_proj.weight": weight}, src / "model.safetensors")
    (src / "config.json").write_text("{}")
    fails(NonFiniteScaleError, r"model\.layers\.0\.mlp\.down_proj\.weight \(in model\.safetensors\): its ",
          src, tmp_path / "out", scheme="W4A16_ASYM")
