"""The converter path (``ptq_core.convert``): planning a chain from headers, running it per module.

The oracle throughout: the same converter chain applied by hand to every tensor of the
checkpoint at once (as llm-compressor applies it to a shard), saved as a dense copy, then
our dense path (itself byte-identical to the reference, see test_pipeline.py). Our
converter path must give the same bytes while converting one module at a time.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from compressed_tensors.entrypoints.convert import CompressedTensorsDequantizer
from compressed_tensors.quantization import QuantizationConfig, preset_name_to_scheme
from safetensors.torch import load_file, save_file

from factory import load_tensors, make_checkpoint
from ptq_core import model_free_ptq
from ptq_core.checkpoint import open_checkpoint
from ptq_core.convert import plan_conversion
from ptq_core.errors import AppendError, CheckpointError, ConverterError, InvalidOptionError

LLAMA = {"shards": 2, "split_fused": True}


def same_bytes(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert torch.equal(a[name].contiguous().view(-1).view(torch.uint8), b[name].contiguous().view(-1).view(torch.uint8)), name
    return True


def converted_copy(src, dst, converters):
    """The oracle: the chain over the whole checkpoint in one dict, written as one dense shard."""
    tensors = load_tensors(src)
    for converter in converters:
        tensors = converter.process(tensors)
    dst.mkdir()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config.pop("quantization_config", None)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


class Rescale:
    """A converter of our own: ``weight`` -> ``weight * scale`` for modules with a ``scale`` tensor."""

    def __init__(self):
        self.calls = 0

    def process(self, tensors):
        self.calls += 1
        for name in [n for n in tensors if n.endswith(".scale")]:
            module = name.removesuffix(".scale")
            tensors[f"{module}.weight"] = (tensors[f"{module}.weight"].float() * tensors.pop(name)).to(torch.bfloat16)
        return tensors

    def get_dependencies(self, name):
        module, _, param = name.rpartition(".")
        return {f"{module}.scale"} if param == "weight" and "mlp" in module else set()

    def update_config(self, config):
        return None


def with_scales(src, dst):
    """A copy of ``src`` where every MLP weight has a ``scale`` (in the other shard than its weight)."""
    shutil.copytree(src, dst)
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    scales = {}
    for name, shard in index["weight_map"].items():
        if name.endswith("weight") and ".mlp." in name:
            other = shards[1 - shards.index(shard)]
            scales.setdefault(other, {})[name.removesuffix("weight") + "scale"] = torch.tensor(1.5)
    for shard, extra in scales.items():
        tensors = load_file(str(dst / shard))
        tensors.update(extra)
        save_file(tensors, str(dst / shard), metadata={"format": "pt"})
        index["weight_map"].update(dict.fromkeys(extra, shard))
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    return dst


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("llama") / "src", "llama", **LLAMA)


def test_a_custom_converter_with_dependencies_in_the_other_shard_equals_the_whole_dict_oracle(llama, tmp_path):
    src = with_scales(llama, tmp_path / "src")
    want = tmp_path / "want"
    model_free_ptq(converted_copy(src, tmp_path / "dense", [Rescale()]), want, "NVFP4A16", ignore=["lm_head"], device="cpu")
    converter = Rescale()
    model_free_ptq(src, tmp_path / "got", "NVFP4A16", ignore=["lm_head"], device="cpu", converter=converter)
    assert same_bytes(load_tensors(tmp_path / "got"), load_tensors(want))
    config = json.loads((tmp_path / "got" / "config.json").read_text())["quantization_config"]
    assert list(config["config_groups"]) == ["NVFP4A16"]  # update_config() -> None: only the new config


def test_untouched_modules_are_left_to_byte_copies_and_touched_ones_are_planned(llama, tmp_path):
    src = with_scales(llama, tmp_path / "src")
    plan = plan_conversion(open_checkpoint(src), [Rescale()])
    modules = {d.module for d in plan.dequantize}
    assert modules and all(".mlp." in m for m in modules)  # attention, norms, embeddings: copied as bytes
    step = next(d for d in plan.dequantize if d.output.endswith("mlp.up_proj.weight"))
    assert step.dependencies == (step.module + ".scale",) and (step.dtype, len(step.shape)) == ("BF16", 2)
    assert plan.consumed >= {step.module + ".scale"}


class InPlace(Rescale):
    """Modifies the weight in place and hands the same object back: must not be mistaken for untouched."""

    def process(self, tensors):
        for name in tensors:
            if name.endswith("down_proj.weight"):
                tensors[name].mul_(2)
        return tensors

    def get_dependencies(self, name):
        return set()


def test_a_converter_that_changes_values_in_place_is_not_taken_for_a_copy(llama, tmp_path):
    plan = plan_conversion(open_checkpoint(llama), [InPlace()])
    assert {d.output for d in plan.dequantize} >= {"model.layers.0.mlp.down_proj.weight"}
    model_free_ptq(llama, tmp_path / "got", "W4A16", ignore=["lm_head"], device="cpu", converter=InPlace())
    model_free_ptq(converted_copy(llama, tmp_path / "dense", [InPlace()]), tmp_path / "want", "W4A16",
                   ignore=["lm_head"], device="cpu")
    assert same_bytes(load_tensors(tmp_path / "got"), load_tensors(tmp_path / "want"))


class NeedsValues(Rescale):
    """Cannot run on meta tensors (it reads a value): probed on zeros, once per look."""

    def __init__(self):
        super().__init__()
        self.zero_probes = 0

    def process(self, tensors):
        for name in [n for n in tensors if n.endswith(".scale")]:
            value = tensors[name].item()  # raises on meta
            if value == 0:
                self.zero_probes += 1
        return super().process(tensors)


def test_a_converter_that_reads_values_is_probed_on_zeros_once_per_look(llama, tmp_path):
    src = with_scales(llama, tmp_path / "src")
    converter = NeedsValues()
    plan = plan_conversion(open_checkpoint(src), [converter])
    mlp_weights = [d for d in plan.dequantize if d.output.endswith("proj.weight")]
    assert len(mlp_weights) == 6  # 2 layers x gate/up/down
    # gate and up share a shape, down differs: two looks, however many layers
    assert converter.zero_probes == 2
    model_free_ptq(src, tmp_path / "got", "W4A16", ignore=["lm_head"], device="cpu", converter=NeedsValues())
    model_free_ptq(converted_copy(src, tmp_path / "dense", [Rescale()]), tmp_path / "want", "W4A16",
                   ignore=["lm_head"], device="cpu")
    assert same_bytes(load_tensors(tmp_path / "got"), load_tensors(tmp_path / "want"))


class ShapeFromValues(NeedsValues):
    """Its output shape depends on a value: the run disagrees with the plan, and says so."""

    def process(self, tensors):
        tensors = super().process(tensors)
        return {k: (v[: v.shape[0] // 2] if k.endswith("down_proj.weight") and not (v == 0).all() else v)
                for k, v in tensors.items()}


def test_an_output_whose_shape_depends_on_values_fails_with_the_module_named(llama, tmp_path):
    src = with_scales(llama, tmp_path / "src")
    with pytest.raises(ConverterError, match=r"mlp\.down_proj: the converter chain made .*down_proj\.weight .* when planned"):
        model_free_ptq(src, tmp_path / "out", "W4A16", ignore=["lm_head"], device="cpu", converter=ShapeFromValues())
    assert not (tmp_path / "out").exists()


def test_bad_converters_are_refused_before_anything_is_read(llama, tmp_path):
    with pytest.raises(InvalidOptionError, match="converter object has no process, get_dependencies, update_config"):
        model_free_ptq(llama, tmp_path / "out", "W4A16", converter=object())

    class Broken(Rescale):
        def process(self, tensors):
            raise RuntimeError("boom")

    src = with_scales(llama, tmp_path / "src")
    with pytest.raises(ConverterError, match=r"Broken failed on lm_head \(lm_head\.weight\): RuntimeError: boom"):
        model_free_ptq(src, tmp_path / "out", "W4A16", device="cpu", converter=Broken())
    assert not (tmp_path / "out").exists()


def test_a_dependency_that_no_shard_holds_is_named(llama, tmp_path):
    with pytest.raises(CheckpointError, match=r"Rescale needs model\.layers\.0\.mlp\.\w+\.scale to convert .*no shard holds it"):
        model_free_ptq(llama, tmp_path / "out", "W4A16", device="cpu", converter=Rescale())


def test_a_list_of_converters_runs_in_order(llama, tmp_path):
    src = with_scales(llama, tmp_path / "src")
    chain = [Rescale(), InPlace()]
    model_free_ptq(src, tmp_path / "got", "NVFP4A16", ignore=["lm_head"], device="cpu", converter=chain)
    model_free_ptq(converted_copy(src, tmp_path / "dense", [Rescale(), InPlace()]), tmp_path / "want", "NVFP4A16",
                   ignore=["lm_head"], device="cpu")
    assert same_bytes(load_tensors(tmp_path / "got"), load_tensors(tmp_path / "want"))


# --- a compressed-tensors source: append (model_free_ptq's default) ------------------------------

def _config(preset: str, targets: list[str]) -> QuantizationConfig:
    return QuantizationConfig(config_groups={preset.lower(): preset_name_to_scheme(preset, targets)}, ignore=["lm_head"])


def test_appending_to_a_compressed_tensors_checkpoint_keeps_its_modules_and_merges_the_config(llama, tmp_path):
    mlp_only = tmp_path / "mlp"
    model_free_ptq(llama, mlp_only, config=_config("NVFP4A16", [r"re:.*mlp.*"]), device="cpu")
    model_free_ptq(mlp_only, tmp_path / "both", config=_config("FP8_BLOCK", [r"re:.*self_attn.*"]), device="cpu")
    both, source = load_tensors(tmp_path / "both"), load_tensors(mlp_only)
    mlp = {k: v for k, v in source.items() if ".mlp." in k}
    assert same_bytes({k: both[k] for k in mlp}, mlp)  # copied as they were, scales included
    # the attention now is FP8_BLOCK, exactly as a dense run would make it
    model_free_ptq(llama, tmp_path / "attn", config=_config("FP8_BLOCK", [r"re:.*self_attn.*"]), device="cpu")
    attn = {k: v for k, v in load_tensors(tmp_path / "attn").items() if ".self_attn." in k}
    assert same_bytes({k: both[k] for k in attn}, attn)
    config = json.loads((tmp_path / "both" / "config.json").read_text())["quantization_config"]
    assert set(config["config_groups"]) == {"nvfp4a16", "fp8_block"} and config["format"] == "mixed-precision"


def test_an_append_is_made_loadable_new_groups_name_their_modules_and_stale_ignores_go(llama, tmp_path):
    """Appending FP8_BLOCK (targets Linear) where the source's NVFP4A16 group also targets Linear."""
    source = tmp_path / "mlp"
    model_free_ptq(llama, source, "NVFP4A16", ignore=["lm_head", r"re:.*self_attn.*"], device="cpu")
    model_free_ptq(source, tmp_path / "both", "FP8_BLOCK", ignore=["lm_head"], device="cpu")
    config = json.loads((tmp_path / "both" / "config.json").read_text())["quantization_config"]
    assert config["config_groups"]["NVFP4A16"]["targets"] == ["Linear"]
    assert config["config_groups"]["FP8_BLOCK"]["targets"] == [
        rf"re:^model\.layers\.\d+\.self_attn\.{p}$" for p in ("k_proj", "o_proj", "q_proj", "v_proj")]
    assert config["ignore"] == ["lm_head"]  # re:.*self_attn.* named only modules quantized now


def test_an_append_a_loader_would_misread_is_refused_before_anything_is_written(llama, tmp_path):
    source = tmp_path / "mlp"
    model_free_ptq(llama, source, "NVFP4A16", ignore=["lm_head", r"re:.*self_attn.*"], device="cpu")
    # q_proj only: the source's `re:.*self_attn.*` must stay for k/v/o, and then it hides q_proj
    with pytest.raises(AppendError, match=r"self_attn\.q_proj is quantized now, but a loader would give it no config group"):
        model_free_ptq(source, tmp_path / "out", config=_config("FP8_BLOCK", [r"re:.*q_proj$"]), device="cpu")
    assert not (tmp_path / "out").exists()


def test_the_front_ends_dequantize_a_compressed_tensors_source_instead(llama, tmp_path):
    from ptq_core.cli import main

    source = tmp_path / "w4"
    model_free_ptq(llama, source, "W4A16", ignore=["lm_head"], device="cpu")
    assert main(["quantize", str(source), str(tmp_path / "got"), "--scheme", "NVFP4A16", "--device", "cpu",
                 "--no-default-ignore", "--ignore", "lm_head"]) == 0
    dense = converted_copy(source, tmp_path / "dense", [CompressedTensorsDequantizer(str(source))])
    model_free_ptq(dense, tmp_path / "want", "NVFP4A16", ignore=["lm_head"], device="cpu")
    assert same_bytes(load_tensors(tmp_path / "got"), load_tensors(tmp_path / "want"))
    config = json.loads((tmp_path / "got" / "config.json").read_text())["quantization_config"]
    assert list(config["config_groups"]) == ["NVFP4A16"]


def test_a_streamed_compressed_tensors_source_equals_a_local_run(hub, llama, tmp_path):
    """Hub jobs read a converted module's tensors by Range, each once, and convert them in memory."""
    import ptq_core
    from ptq_core.hubjob import quantize_to_hub
    from ptq_core.job import make_job

    source = tmp_path / "nvfp4"
    model_free_ptq(llama, source, "NVFP4A16", ignore=["lm_head"], device="cpu")
    hub.configure(lfs_threshold=64 * 1024)
    hub.seed_repo("bob/tiny-nvfp4", {p.name: p for p in source.iterdir() if p.is_file()})
    result = quantize_to_hub("bob/tiny-nvfp4", "W4A16", token="hf_test_alice", work_dir=tmp_path / "work")
    local = tmp_path / "local"
    ptq_core.quantize_job(make_job(str(source), "W4A16"), local)
    for name in sorted(p.name for p in local.iterdir()):
        assert hub.read_file(result.repo_id, name) == (local / name).read_bytes(), name
    assert "source: compressed-tensors, decompressed in memory" in result.plan.to_markdown()
    card = hub.read_file(result.repo_id, "README.md").decode()
    assert "| source weights | compressed-tensors, decompressed in memory |" in card


def test_exact_targets_use_a_regex_only_for_layer_kinds_quantized_whole():
    from ptq_core.output_config import _exact_targets
    from ptq_core.matching import match_name

    modules = [f"model.layers.{i}.mlp.{p}" for i in range(3) for p in ("down_proj", "up_proj")] + ["lm_head"]
    mine = [f"model.layers.{i}.mlp.down_proj" for i in range(3)] + ["model.layers.1.mlp.up_proj"]
    targets = _exact_targets(mine, modules)
    assert targets == ["model.layers.1.mlp.up_proj", r"re:^model\.layers\.\d+\.mlp\.down_proj$"]
    assert sorted(m for m in modules if any(match_name(m, t) for t in targets)) == sorted(mine)


def test_a_lone_bf16_fp8_block_dequantizer_is_replaced_by_the_fused_decode_and_others_are_not(tmp_path):
    from compressed_tensors.entrypoints.convert import FP8BlockDequantizer

    from factory import make_fp8_block_checkpoint

    src = make_fp8_block_checkpoint(tmp_path / "fp8", "llama")
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")):
        got = model_free_ptq(src, tmp_path / name, "W4A16", ignore=["lm_head"], device="cpu",
                             converter=[FP8BlockDequantizer.from_pretrained(str(src), dtype=dtype)])
        oracle = converted_copy(src, tmp_path / f"dense-{name}", [FP8BlockDequantizer.from_pretrained(str(src), dtype=dtype)])
        model_free_ptq(oracle, tmp_path / f"want-{name}", "W4A16", ignore=["lm_head"], device="cpu")
        assert same_bytes(load_tensors(tmp_path / name), load_tensors(tmp_path / f"want-{name}"))
        fused = dtype == torch.bfloat16  # ptq-hub's own decode writes bf16 only
        assert bool(got.plan.source.converters) != fused
        assert got.plan.source.format.summary == ("FP8 blocks (128x128), dequantized in memory" if fused
                                                  else "converted in memory by FP8BlockDequantizer")


def test_hub_jobs_refuse_converter_objects_before_any_request(hub):
    from ptq_core.hubjob import plan_hub_model, plan_hub_parts, quantize_to_hub
    from ptq_core.job import make_job

    for job in (make_job("bob/tiny", "W4A16", converters=Rescale()), make_job("bob/tiny", "W4A16", append=True)):
        for call in (lambda: quantize_to_hub(job, token="hf_test_alice"), lambda: plan_hub_model(job),
                     lambda: plan_hub_parts(job, 2)):
            with pytest.raises(InvalidOptionError, match="converters and append are for a local run"):
                call()
    assert not hub.requests_log


def test_the_plan_of_a_quantized_source_counts_dense_rows_and_the_stored_total(tmp_path):
    from factory import make_awq_checkpoint
    from ptq_core.checkpoint import open_checkpoint as open_ckpt
    from ptq_core.planner import plan_checkpoint
    from ptq_core.sizes import format_bytes

    src = make_awq_checkpoint(tmp_path / "awq", "llama", group_size=64)
    plan = plan_checkpoint(src, "NVFP4A16", ignore=["lm_head"])
    text = plan.to_markdown()
    stored = open_ckpt(src).total_bytes
    assert plan.size_before == stored
    assert f"converted and decompressed in memory (14 weights), {format_bytes(stored)} as stored" in text
    assert "| | tensors | dequantized | after |" in text
    dense = sum(2 * i.shape[0] * i.shape[1] for i in plan.quantized) + sum(o.nbytes for i in plan.items if i.group is None
                                                                         for o in i.outputs)
    assert f"| **total** | {len(plan.items)} | **{format_bytes(dense)}** |" in text
    assert "smaller than the source as stored) |" in text
