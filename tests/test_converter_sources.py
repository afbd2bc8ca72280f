"""Quantized sources: ``model_free_ptq(converter=...)`` and the front ends' auto-detection.

Three oracles, none of them our own decoder:

* **The peer.** ``tests/golden/converters.safetensors`` + ``converters.json`` hold what
  llm-compressor 0.14.0.1's real ``model_free_ptq(..., converter=<compressed-tensors converter>)``
  wrote for the seeded sources of ``tests/golden/converter_cases.py`` (FP8 blocks, AutoAWQ GEMM,
  ModelOpt NVFP4, compressed-tensors NVFP4A16; scales in another shard than their weight, fused
  groups split over shards). Ours, given the same converter built with our venv's
  compressed-tensors, must write the same tensors (names, dtypes, shapes, bytes), the same
  ``weight_map`` and the same ``quantization_config``. Regenerate the golden with::

      ~/.cache/ptq-hub/bench/peer-venv/bin/python tests/golden/make_converter_golden.py

* **compressed-tensors' converters, in process.** A converter chain applied to the whole
  checkpoint's tensors, the result written as a dense copy and quantized by our dense path
  (itself byte-identical to the reference, see tests/core/test_pipeline.py).

* **The same, plus its compressors' ``decompress``** (through ``CompressedTensorsDequantizer``,
  bfloat16): what the CLI must do on its own when ``config.json`` says the source is
  compressed-tensors, ModelOpt NVFP4 or AutoAWQ.

What the peer's configs show (pinned by the golden, so a change is a decision, not an accident):
the peer seeds the config chain with the source's ``quantization_config`` whenever compressed-
tensors can parse it, which a ModelOpt >= 0.29 export's is (``config_groups``), so that case
keeps ModelOpt's ``group_0`` and even its ``quant_method: "modelopt"``; ``QuantizationConfig.merge``
keeps only the first config's ``ignore`` (``lm_head`` and AWQ's ``modules_to_not_convert`` stay
listed although the appended group quantized them).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from compressed_tensors.entrypoints.convert.converters import (
    AutoAWQConverter,
    CompressedTensorsDequantizer,
    FP8BlockDequantizer,
    ModelOptNvfp4Converter,
)
from compressed_tensors.quantization import QuantizationConfig
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from factory import (
    load_tensors,
    make_awq_checkpoint,
    make_compressed_tensors_checkpoint,
    make_fp8_block_checkpoint,
    make_modelopt_nvfp4_checkpoint,
    read_index,
    shard_files,
)
from ptq_core import model_free_ptq
from ptq_core.cli import main
from ptq_core.errors import CheckpointError, InvalidOptionError, TensorShapeError, UnsupportedSourceError
from ptq_core.planner import plan_checkpoint

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))
from converter_cases import CONFIG_FILE, DIMS, GOLDEN_FILE, Case, build_converter, build_source, cases, tensors_digest  # noqa: E402

CASES = cases()
IGNORE = ["lm_head", "re:.*embed_tokens$"]
# per-module quantization parameters: a converter reads them with their module's weight
QPARAM = re.compile(r"\.(weight_scale|weight_scale_2|weight_global_scale|weight_zero_point|weight_shape|"
                    r"input_scale|input_global_scale|qzeros|scales|weight_scale_inv)$")
# tensor names only a quantized source has; none may reach a requantized output
SOURCE_ONLY = re.compile(r"\.(qweight|qzeros|scales|weight_scale_2|input_scale|input_global_scale|weight_scale_inv)$")


def raw(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> None:
    assert sorted(got) == sorted(want), f"{what}: names differ: ours only {sorted(set(got) - set(want))}, " \
                                        f"theirs only {sorted(set(want) - set(got))}"
    for name, w in want.items():
        g = got[name]
        assert (g.dtype, tuple(g.shape)) == (w.dtype, tuple(w.shape)), f"{what} {name}: {g.dtype}{tuple(g.shape)} != {w.dtype}{tuple(w.shape)}"
        assert torch.equal(raw(g), raw(w)), f"{what} {name}: {(raw(g) != raw(w)).sum()} bytes differ"


def quantization_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())["quantization_config"]


def comparable(config: dict) -> tuple[QuantizationConfig, dict]:
    """A written ``quantization_config`` as compressed-tensors reads it, across its versions.

    Returns the ``QuantizationConfig`` our compressed-tensors parses from it (compared by value:
    quant_method, format, status, ignore, kv_cache_scheme and every group's targets, format and
    args) and the keys it does not model (``transform_config``...). Normalised, and why:

    * ``version`` is dropped: the peer's venv has compressed-tensors 0.19.0, ours 0.20.1;
    * null/empty and absent are the same: 0.19's ``model_dump`` writes ``actorder``,
      ``block_structure``, ``observer``, ``observer_kwargs``, ``scale_dtype`` as null/empty, 0.20's
      omits them and adds ``moe_sparsity_config: null``; each field defaults to that value;
    * an inferred ``zp_dtype`` is the same as none: 0.19 writes the value it infers
      (``"torch.int8"`` for asymmetric int4), 0.20 infers the same value and omits it;
    * key order: the peer writes config.json with ``sort_keys=True``, so its order carries nothing.
    """
    data = {k: v for k, v in config.items() if k != "version"}
    modelled = QuantizationConfig.model_validate(data)
    rest = {k: v for k, v in data.items() if k not in QuantizationConfig.model_fields and v not in (None, {})}
    return modelled, rest


# --------------------------------------------------------------------------- the peer's golden outputs

def golden_record(case: Case) -> dict:
    return json.loads((GOLDEN / CONFIG_FILE).read_text())["cases"][case.id]


def golden_tensors(case: Case) -> dict[str, torch.Tensor]:
    prefix = f"{case.id}|"
    with safe_open(GOLDEN / GOLDEN_FILE, "pt") as f:
        return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


def test_golden_covers_every_case_and_nothing_else():
    record = json.loads((GOLDEN / CONFIG_FILE).read_text())
    assert sorted(record["cases"]) == sorted(c.id for c in CASES)
    assert record["versions"]["llmcompressor"] == "0.14.0.1"
    with safe_open(GOLDEN / GOLDEN_FILE, "pt") as f:
        assert {k.partition("|")[0] for k in f.keys()} == {c.id for c in CASES}
    assert sum(p.stat().st_size for p in GOLDEN.glob("converters.*")) < 1.5e6


def rebuilt_source(case: Case, tmp_path: Path) -> Path:
    """The case's source, built in our venv (the compressed-tensors and ModelOpt ones with our
    model_free_ptq), checked to hold the very tensors the peer quantized."""
    source = build_source(case, tmp_path)
    assert tensors_digest(source) == golden_record(case)["source_digest"], (
        f"{case.id}: the rebuilt source differs from the one the peer quantized (a factory change, or our "
        "NVFP4A16 no longer matches the peer's); regenerate the golden if the factory changed on purpose"
    )
    return source


# Where the converter leaves modules compressed and the new groups are merged in, the peer writes
# a config no loader reads right (compressed-tensors' merge keeps every target and only the first
# ignore list; a ModelOpt config that parses seeds it, and its quant_method "modelopt" wins). Ours
# keeps the peer's groups and schemes, and repairs targets and ignore (output_config.merge_configs):
# case -> (targets per group, ignore).
REPAIRED = {
    "awq/FP8_DYNAMIC": ({"FP8_DYNAMIC": ["lm_head", "model.layers.0.mlp.down_proj"], "config_group_0": ["Linear"]},
                        ["re:.*embed_tokens$"]),
    "awq-symmetric/W4A16": ({"W4A16": ["model.layers.0.self_attn.o_proj"], "config_group_0": ["Linear"]},
                            ["lm_head", "re:.*embed_tokens$"]),
    "modelopt-nvfp4/FP8_DYNAMIC": ({"FP8_DYNAMIC": ["lm_head"], "config_group_0": [
        f"model.layers.0.{m}" for m in ("mlp.down_proj", "mlp.gate_proj", "mlp.up_proj", "self_attn.k_proj",
                                        "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj")]},
        ["re:.*embed_tokens$"]),
}


def repaired(peer: dict, case_id: str) -> dict:
    """The peer's config with the repairs ours makes (no ModelOpt leftovers, targets, ignore)."""
    targets, ignore = REPAIRED[case_id]
    groups = {name: {**group, "targets": targets[name]} for name, group in peer["config_groups"].items() if name in targets}
    return {**peer, "quant_method": "compressed-tensors", "config_groups": groups, "ignore": ignore,
            "format": "mixed-precision" if len({g["format"] for g in groups.values()}) > 1 else peer["format"]}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_converter_matches_the_peer(tmp_path, case):
    record = golden_record(case)
    source = rebuilt_source(case, tmp_path)
    out = tmp_path / "ours"
    model_free_ptq(source, out, case.scheme, ignore=list(case.ignore), device="cpu",
                   converter=build_converter(case, source))
    assert_same_tensors(load_tensors(out), golden_tensors(case), case.id)
    peer = record["quantization_config"]
    want = repaired(peer, case.id) if case.id in REPAIRED else peer
    assert comparable(quantization_config(out)) == comparable(want)
    assert read_index(out)["weight_map"] == record["weight_map"]


def test_the_repairs_are_needed_the_peers_merged_configs_misload():
    """REPAIRED is not taste: each peer config there resolves some module to the wrong scheme."""
    for case_id in REPAIRED:
        peer = golden_record(next(c for c in CASES if c.id == case_id))["quantization_config"]
        groups = peer["config_groups"].values()
        linear = sum("Linear" in g["targets"] for g in groups)
        assert peer["quant_method"] != "compressed-tensors" or linear > 1, case_id


# --------------------------------------------------------------------------- in-process oracles

def _config_only_folder(folder: Path, quant: dict) -> Path:
    """A folder whose config.json holds ``quant``: all ``CompressedTensorsDequantizer`` reads."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"quantization_config": quant}))
    return folder


def dequantizer_for(converters: list, folder: Path) -> CompressedTensorsDequantizer:
    """compressed-tensors' decompression of what ``converters`` produce (their chained config)."""
    config = None
    for converter in converters:
        config = converter.update_config(config)
    return CompressedTensorsDequantizer(str(_config_only_folder(folder, config.model_dump())))


def converted_by_compressed_tensors(src: Path, dst: Path, converters: list, *, drop=()) -> Path:
    """``converters`` applied in order to the whole checkpoint, written as a dense source.

    One dict for all shards, since a converter's dependencies may sit in another shard than the
    tensor they serve. Each output tensor goes to the shard of the stored tensor it came from
    (itself, or for a scale / zero point, its module's ``weight``/``qweight``/``weight_packed``,
    which the peer's per-shard jobs load it with). Names ending in ``drop`` are left out;
    config.json loses its quantization_config.
    """
    dst.mkdir()
    source_map = {}
    for shard in shard_files(src):
        with safe_open(shard, "pt") as f:
            source_map.update(dict.fromkeys(f.keys(), shard.name))
    tensors = load_tensors(src)
    for converter in converters:
        tensors = converter.process(tensors)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        if name.endswith(drop):
            continue
        module = name.rpartition(".")[0]
        primary = (f"{module}.weight", f"{module}.qweight", f"{module}.weight_packed")
        order = primary + (name,) if QPARAM.search(name) else (name, *primary)
        stored = next(n for n in order if n in source_map)
        parts.setdefault(source_map[stored], {})[name] = tensor.contiguous()
    for shard, part in parts.items():
        save_file(part, str(dst / shard), metadata={"format": "pt"})
    if len(parts) > 1:
        weight_map = {n: shard for shard, part in parts.items() for n in part}
        (dst / "model.safetensors.index.json").write_text(json.dumps({"weight_map": dict(sorted(weight_map.items()))}))
    config = json.loads((src / "config.json").read_text())
    del config["quantization_config"]
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_in_process_oracle_agrees_with_the_peer(tmp_path, case):
    """The peer's tensors and shard placement are the converter applied in process, then our
    dense path on the converted copy: the oracle the tests below rely on, checked against the
    peer (and proof that every golden case is reachable by a converter-then-quantize pipeline).
    The config only matches where the converter dequantizes everything (its update_config is
    None); the others append to the converter's config, which a dense copy does not carry."""
    source = rebuilt_source(case, tmp_path)
    converted = converted_by_compressed_tensors(source, tmp_path / "converted", [build_converter(case, source)])
    model_free_ptq(converted, tmp_path / "want", case.scheme, ignore=list(case.ignore), device="cpu")
    record = golden_record(case)
    assert_same_tensors(load_tensors(tmp_path / "want"), golden_tensors(case), case.id)
    assert read_index(tmp_path / "want")["weight_map"] == record["weight_map"]
    if case.source in ("fp8-block", "compressed-tensors"):
        assert comparable(quantization_config(tmp_path / "want")) == comparable(record["quantization_config"])


def _modules_with(src: Path, suffix: str) -> list[str]:
    return sorted(n.removesuffix(suffix) for n in load_tensors(src) if n.endswith(suffix))


def _awq_rename(src: Path):
    return AutoAWQConverter.from_autoawq_config(json.loads((src / "config.json").read_text())["quantization_config"])


def _modelopt_rename(src: Path):
    return ModelOptNvfp4Converter(targets=_modules_with(src, ".weight_scale_2"))


@pytest.mark.parametrize(("make", "rename"), [
    (make_awq_checkpoint, _awq_rename),
    (make_modelopt_nvfp4_checkpoint, _modelopt_rename),
], ids=["awq", "modelopt"])
def test_a_converter_list_is_applied_in_order(tmp_path, make, rename):
    """[rename to compressed-tensors, then decompress it]: reversed, the decompressor would find
    no ``weight_packed`` yet and the renamed weights would stay packed. Scales sit in the other
    shard than their weight, and q/k/v, gate/up are split over the shards (NVFP4A16 shares one
    global scale per fused group). Whatever the chain yields is quantized or passed on, as the
    peer does: after ModelOpt, CompressedTensorsDequantizer keeps the ``input_global_scale``
    its rename made (compressed-tensors' own behaviour), so both outputs carry them."""
    src = make(tmp_path / "src", "llama", shards=2, split_fused=True, split_scales=True, **DIMS)

    def chain(tag: str) -> list:
        first = rename(src)
        return [first, dequantizer_for([first], tmp_path / f"config-{tag}")]

    model_free_ptq(src, tmp_path / "ours", "NVFP4A16", ignore=IGNORE, device="cpu", converter=chain("ours"))
    dense = converted_by_compressed_tensors(src, tmp_path / "dense", chain("oracle"))
    assert load_tensors(dense)["model.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16
    model_free_ptq(dense, tmp_path / "want", "NVFP4A16", ignore=IGNORE, device="cpu")
    assert_same_tensors(load_tensors(tmp_path / "ours"), load_tensors(tmp_path / "want"), "chain")
    assert read_index(tmp_path / "ours")["weight_map"] == read_index(tmp_path / "want")["weight_map"]
    # the dequantizer's update_config returns None: nothing of the source's config survives
    assert quantization_config(tmp_path / "ours") == quantization_config(tmp_path / "want")
    assert quantization_config(tmp_path / "ours")["quant_method"] == "compressed-tensors"


def test_an_object_without_the_converter_protocol_is_refused(tmp_path):
    src = make_awq_checkpoint(tmp_path / "src", group_size=64, **DIMS)
    with pytest.raises(InvalidOptionError, match="compressed-tensors Converter"):
        model_free_ptq(src, tmp_path / "out", "W4A16", ignore=IGNORE, device="cpu", converter=[object()])
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- auto-detection by the front ends

def _awq(path: Path, **kw) -> Path:
    return make_awq_checkpoint(path, "llama", **kw, **DIMS)


def _modelopt(path: Path, **kw) -> Path:
    return make_modelopt_nvfp4_checkpoint(path, "llama", **kw, **DIMS)


def _ct(scheme: str):
    def make(path: Path, **kw) -> Path:
        return make_compressed_tensors_checkpoint(path, "llama", scheme, **kw, **DIMS)
    return make


def reference_converters(fmt: str, src: Path) -> list:
    """What each format's detection must amount to: compressed-tensors' own converters."""
    if fmt == "awq":
        return [AutoAWQConverter.from_autoawq_config(json.loads((src / "config.json").read_text())["quantization_config"])]
    if fmt == "modelopt":
        return [ModelOptNvfp4Converter(targets=_modules_with(src, ".weight_scale_2"))]
    return []


def dequantized_by_compressed_tensors(fmt: str, src: Path, tmp_path: Path) -> Path:
    """The dense bfloat16 source a quantized one stands for: its converter, then decompress.

    The source's activation scales (ModelOpt's ``input_scale``, compressed-tensors'
    ``input_global_scale``) are dropped: they describe the old scheme's inputs, a dense model
    has none, and ``CompressedTensorsDequantizer.validate`` itself calls them residual.
    """
    converters = reference_converters(fmt, src)
    if fmt == "compressed-tensors":
        converters.append(CompressedTensorsDequantizer(str(src)))
    else:
        converters.append(dequantizer_for(converters, tmp_path / "converted-config"))
    return converted_by_compressed_tensors(src, tmp_path / "dense", converters, drop=(".input_global_scale",))


SOURCES = {
    # (format, factory, factory kwargs, new scheme)
    "awq-2-shards-scales-apart": ("awq", _awq, dict(group_size=64, shards=2, split_fused=True, split_scales=True), "NVFP4A16"),
    "awq-symmetric-skipped-module": ("awq", _awq, dict(group_size=32, zero_point=False, modules_to_not_convert=["down_proj"]), "W4A16"),
    "modelopt-2-shards-scales-apart": ("modelopt", _modelopt, dict(shards=2, split_fused=True, split_scales=True), "W4A16"),
    "modelopt-1-shard": ("modelopt", _modelopt, {}, "FP8_DYNAMIC"),
    "ct-nvfp4a16-2-shards-scales-apart": ("compressed-tensors", _ct("NVFP4A16"), dict(shards=2, split_fused=True, split_scales=True), "W4A16"),
    "ct-w4a16-2-shards": ("compressed-tensors", _ct("W4A16"), dict(shards=2, split_fused=True), "NVFP4A16"),
    "ct-w4a16-asym": ("compressed-tensors", _ct("W4A16_ASYM"), {}, "FP8_BLOCK"),
}


@pytest.mark.parametrize("key", list(SOURCES))
def test_cli_dequantizes_a_quantized_source_like_compressed_tensors(tmp_path, key):
    fmt, make, kwargs, scheme = SOURCES[key]
    src = make(tmp_path / "src", **kwargs)
    dense = dequantized_by_compressed_tensors(fmt, src, tmp_path)
    assert main(["quantize", str(src), str(tmp_path / "ours"), "--scheme", scheme]) == 0
    assert main(["quantize", str(dense), str(tmp_path / "want"), "--scheme", scheme]) == 0

    got, want = load_tensors(tmp_path / "ours"), load_tensors(tmp_path / "want")
    assert not [n for n in got if SOURCE_ONLY.search(n)]
    assert_same_tensors(got, want, key)
    if kwargs.get("shards", 1) > 1:
        assert read_index(tmp_path / "ours")["weight_map"] == read_index(tmp_path / "want")["weight_map"]
    # only the new quantization_config; the rest of config.json is the source's
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["quantization_config"] == quantization_config(tmp_path / "want")
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    source_config = json.loads((src / "config.json").read_text())
    del config["quantization_config"], source_config["quantization_config"]
    assert config == source_config


@pytest.mark.parametrize(("make", "kwargs", "named"), [
    (_awq, dict(group_size=64), "AWQ"),
    (_modelopt, {}, "ModelOpt NVFP4"),
    (_ct("NVFP4A16"), {}, "compressed-tensors"),
], ids=["awq", "modelopt", "compressed-tensors"])
def test_plan_names_the_source_format(tmp_path, capsys, make, kwargs, named):
    src = make(tmp_path / "src", **kwargs)
    assert main(["plan", str(src), "--scheme", "W4A16"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("source:")]
    assert len(lines) == 1 and named in lines[0], lines


# --------------------------------------------------------------------------- hostile source configs
# Each of these used to plan "decompressed in memory" and copy packed integers as they are (or
# fail with an untyped TypeError / ValueError, or plan a 9571 TB weight): now each is a typed
# error naming the field, before anything is written.


def _edit_quant(src: Path, edit) -> Path:
    config = json.loads((src / "config.json").read_text())
    edit(config["quantization_config"])
    (src / "config.json").write_text(json.dumps(config))
    return src


def _weights(**args):
    return lambda q: [g["weights"].update(args) for g in q["config_groups"].values()]


HOSTILE = {
    "ct-no-groups": (_ct("W4A16"), lambda q: q.update(config_groups={}), CheckpointError, r"config_groups is \{\}"),
    "ct-0-bits": (_ct("W4A16"), _weights(num_bits=0), CheckpointError, r"W4A16\.weights\.num_bits 0 is impossible"),
    "ct-64-bits": (_ct("W4A16"), _weights(num_bits=64), CheckpointError, r"num_bits 64 is impossible"),
    "ct-float-int-packed": (_ct("W4A16"), _weights(type="float"), CheckpointError,
                            r"model\.layers\.0\.\S+ is stored compressed \(\S+\.weight_packed\).*describes no way to decode"),
    "ct-targets-unmatched": (_ct("W4A16"), lambda q: [g.update(targets=["Conv2d"]) for g in q["config_groups"].values()],
                             CheckpointError, r"is stored compressed.*match no such module"),
    "ct-group-size-string": (_ct("W4A16"), _weights(group_size="128"), CheckpointError,
                             r"W4A16\.weights\.group_size '128' is not a positive integer"),
    "ct-ignore-string": (_ct("W4A16"), lambda q: q.update(ignore="lm_head"), CheckpointError,
                         r"quantization_config\.ignore is the single string 'lm_head'"),
    "ct-group-size-2^40": (_ct("W4A16"), _weights(group_size=2**40), TensorShapeError,
                           r"group_size 1099511627776 is absurd for model\.\S+\.weight_packed"),
    "ct-block-2^21": (_ct("FP8_BLOCK"), _weights(block_structure=[2**21, 1]), TensorShapeError,
                      r"block_structure \[2097152, 1\] is absurd for model\.\S+\.weight \(F8_E4M3"),
    "awq-skip-string": (_awq, lambda q: q.update(modules_to_not_convert="mlp"), CheckpointError,
                        r"modules_to_not_convert is the single string 'mlp'"),
    "awq-skip-ints": (_awq, lambda q: q.update(modules_to_not_convert=[1, 2]), CheckpointError,
                      r"modules_to_not_convert holds 1, not a module name"),
    "awq-group-abc": (_awq, lambda q: q.update(group_size="abc"), CheckpointError, r"group_size 'abc' is not a positive integer"),
    "awq-bits-string": (_awq, lambda q: q.update(bits="4"), CheckpointError, r"bits '4' is a str, not an integer"),
    "awq-group-2^40": (_awq, lambda q: q.update(group_size=2**40), TensorShapeError,
                       r"\.qweight has \d+ input rows, which groups of 1099511627776 .* do not divide"),
    "awq-group-wrong": (_awq, lambda q: q.update(group_size=32), TensorShapeError,
                        r"\.(qzeros|scales) has shape \[\d+, \d+\], but \S+\.qweight \[\d+, \d+\] in groups of 32 needs \[\d+, \d+\]"),
}


@pytest.mark.parametrize("key", list(HOSTILE))
def test_a_hostile_source_config_is_refused_before_anything_is_written(tmp_path, key):
    make, edit, error, match = HOSTILE[key]
    src = _edit_quant(make(tmp_path / "src", **({"group_size": 64} if make is _awq else {})), edit)
    with pytest.raises(error, match=match):
        plan_checkpoint(src, "FP8_BLOCK")
    with pytest.raises(error, match=match):
        model_free_ptq(src, tmp_path / "out", "FP8_BLOCK")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_awq_bits_other_than_4_names_the_bits(tmp_path):
    src = _edit_quant(_awq(tmp_path / "src", group_size=64), lambda q: q.update(bits=8))
    with pytest.raises(UnsupportedSourceError, match=r"^The source is AWQ 8-bit 'gemm'; ptq-hub converts 4-bit GEMM AWQ only"):
        plan_checkpoint(src, "W4A16")


def test_a_packed_tensor_left_undecoded_is_refused(tmp_path):
    """The plan's last check: a packed tensor the chain does not consume (here an AWQ qweight on a
    module modules_to_not_convert names, so no step decodes it) would be copied under the new config."""
    src = _edit_quant(_awq(tmp_path / "src", group_size=64), lambda q: q.update(modules_to_not_convert=["down_proj"]))
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.mlp\.down_proj\.qweight \(I32\) holds AWQ .* values that no step decodes"):
        plan_checkpoint(src, "W4A16")


def test_a_callers_chain_that_leaves_packed_tensors_is_refused(tmp_path):
    """A chain whose config says "dense" (``update_config`` gives None) but decodes nothing: the
    AWQ qweights were copied as they are, under the new scheme's config."""
    src = _awq(tmp_path / "src", group_size=64)
    chain = FP8BlockDequantizer(targets=["no-such-module"])
    with pytest.raises(CheckpointError, match=r"^model\.\S+\.(qweight|qzeros) \(I32\) holds compressed \(FP8BlockDequantizer "
                                              r"leaves them\) values that no step decodes"):
        model_free_ptq(src, tmp_path / "out", "W4A16", converter=chain)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_callers_fp8_dequantizer_gets_the_scale_shape_check_in_the_plan(tmp_path):
    src = make_fp8_block_checkpoint(tmp_path / "src", "llama", **DIMS)
    (shard,) = shard_files(src)
    tensors = load_file(str(shard))
    name = "model.layers.0.mlp.up_proj.weight_scale_inv"
    tensors[name] = tensors[name][:1].contiguous()
    save_file(tensors, str(shard), metadata={"format": "pt"})
    with pytest.raises(TensorShapeError, match=rf"^{re.escape(name)} has shape \[1, \d+\], but its weight"):
        model_free_ptq(src, tmp_path / "out", "W4A16", converter=FP8BlockDequantizer.from_pretrained(str(src)))


def test_a_compressed_tensors_config_without_groups_is_fine_where_nothing_is_compressed(tmp_path):
    """No config groups is refused only where weights are stored compressed: a dense checkpoint
    whose config only sets a kv-cache scheme plans as before."""
    from factory import make_checkpoint

    src = make_checkpoint(tmp_path / "src", "llama", **DIMS)
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "compressed-tensors", "config_groups": {},
                                     "format": "dense", "ignore": None}
    (src / "config.json").write_text(json.dumps(config))
    plan = plan_checkpoint(src, "W4A16")
    assert plan.quantized and not plan.source.dequantize
