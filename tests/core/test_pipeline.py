"""End to end: ``ptq_core.model_free_ptq`` on factory checkpoints, against the reference.

For every output the expected tensors are derived independently of ``ptq_core``: the
checkpoint is read with safetensors, fused 3-D experts are split with
``reference_split_experts``, the quantized set is decided from the ignore list /
targets, NVFP4 fused groups come from ``factory.expected_fused_pairs`` and every
weight is quantized by compressed-tensors' reference path (``tests/reference.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import pytest
import torch
from compressed_tensors import __version__ as CT_VERSION
from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme
from factory import (
    expected_fused_pairs,
    load_tensors,
    make_checkpoint,
    read_index,
    shard_files,
)
from reference import (
    global_scale_from_absmax,
    group_absmax,
    preset,
    reference_format,
    reference_quantize,
    reference_split_experts,
)
from safetensors import safe_open

from ptq_core import model_free_ptq, reindex_fused_weights
from ptq_core.schemes import DEFAULT_IGNORE, list_schemes

INDEX = "model.safetensors.index.json"
MAIN = ("FP8_BLOCK", "FP8_DYNAMIC", "NVFP4A16", "MXFP4A16", "W4A16", "W4A16_ASYM")
ALL_PRESETS = [s.name for s in list_schemes()]

# Small but real-shaped models: every K a multiple of 128, DeepSeek's kv_a_proj_with_mqa 160 rows.
ARCHS: dict[str, tuple[str, dict]] = {
    "llama": ("llama", dict(hidden_size=128, intermediate_size=256, num_attention_heads=2,
                            num_key_value_heads=1, head_dim=64, vocab_size=256, num_hidden_layers=2)),
    "qwen3_moe": ("qwen3_moe", dict(hidden_size=128, intermediate_size=256, moe_intermediate_size=128,
                                    num_experts=3, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                                    vocab_size=256, num_hidden_layers=1)),
    "deepseek_v3": ("deepseek_v3", dict(hidden_size=128, intermediate_size=256, moe_intermediate_size=128,
                                        num_attention_heads=2, num_key_value_heads=2, n_routed_experts=2,
                                        vocab_size=256)),
    "mixtral": ("mixtral", dict(hidden_size=128, intermediate_size=128, num_attention_heads=2,
                                num_key_value_heads=1, head_dim=64, num_local_experts=3, vocab_size=256,
                                num_hidden_layers=1)),
}
# qwen3_moe_fused: the same numbers as qwen3_moe, in transformers-5's fused 3-D expert layout
VARIANTS = {"llama": {}, "qwen3_moe": {}, "qwen3_moe_fused": {"fused_experts": True},
            "deepseek_v3": {}, "mixtral": {}}
LAYOUTS = {"single": dict(shards=1), "split": dict(shards=3, split_fused=True)}
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
              "chat_template.jinja", "LICENSE")
# The source card describes the unquantized model: a folder drops it as a Hub download does.
NOT_COPIED = ("README.md",)


# --------------------------------------------------------------------------- the oracle


def raw(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha1(raw(t).numpy().tobytes()).hexdigest() + f"{t.dtype}{tuple(t.shape)}"


def _match(module: str, pattern: str) -> bool:
    return re.match(pattern[3:], module) is not None if pattern.startswith("re:") else module == pattern


_REF_CACHE: dict[tuple, dict[str, torch.Tensor]] = {}


def _reference(scheme_key: str, scheme: QuantizationScheme, w: torch.Tensor, ga: torch.Tensor | None):
    key = (scheme_key, _digest(w), None if ga is None else _digest(ga))
    if key not in _REF_CACHE:
        _REF_CACHE[key] = reference_quantize(w, scheme, global_absmax=ga)
    return _REF_CACHE[key]


def source_tensors(src: Path) -> dict[str, torch.Tensor]:
    """Every input tensor, 3-D fused experts split the way llm-compressor splits them."""
    out: dict[str, torch.Tensor] = {}
    for name, t in load_tensors(src).items():
        out.update(reference_split_experts(name, t))
    return out


def expected_outputs(src: Path, groups: list[tuple[str, QuantizationScheme]], ignore) -> tuple[dict, list, dict]:
    """(expected output tensors, fused groups, {weight: scheme key}) for a checkpoint.

    ``groups``: (key, scheme) in config order; the first whose targets match wins.
    """
    tensors = source_tensors(src)
    assign: dict[str, tuple[str, QuantizationScheme]] = {}
    for name, t in tensors.items():
        module, _, param = name.rpartition(".")
        if param != "weight" or t.ndim != 2 or module.endswith("norm"):
            continue
        if any(_match(module, p) for p in ignore):
            continue
        for key, scheme in groups:
            if any(tg == "Linear" or _match(module, tg) for tg in scheme.targets):
                assign[name] = (key, scheme)
                break
    fused, absmax = [], {}
    for members in expected_fused_pairs(assign):
        keys = {assign[m][0] for m in members}
        scheme = assign[members[0]][1]
        if len(keys) == 1 and scheme.weights.strategy == "tensor_group":
            fused.append(members)
            ga = group_absmax([tensors[m] for m in members], scheme)
            for m in members:
                absmax[m] = ga
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name not in assign:
            out[name] = t
            continue
        key, scheme = assign[name]
        module = name.rpartition(".")[0]
        for local, value in _reference(key, scheme, t, absmax.get(name)).items():
            out[f"{module}.{local}"] = value
    return out, fused, {n: k for n, (k, _) in assign.items()}


def assert_same_tensors(got: dict, want: dict, what: str = "") -> None:
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not extra, f"{what}: missing {missing[:5]}, unexpected {extra[:5]}"
    for name in want:
        a, b = got[name], want[name]
        assert a.dtype == b.dtype, f"{what} {name}: dtype {a.dtype} != {b.dtype}"
        assert tuple(a.shape) == tuple(b.shape), f"{what} {name}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        assert torch.equal(raw(a), raw(b)), f"{what} {name}: bytes differ from the reference"


def output_shards(out: Path) -> dict[str, list[str]]:
    files = sorted(p.name for p in out.glob("*.safetensors"))
    result = {}
    for f in files:
        with safe_open(str(out / f), framework="pt") as fh:
            result[f] = list(fh.keys())
    return result


def check_index(out: Path, tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """The index maps exactly the output tensors to the shard holding each; exact total_size."""
    index = json.loads((out / INDEX).read_text())
    shards = output_shards(out)
    where = {name: shard for shard, names in shards.items() for name in names}
    assert sum(len(v) for v in shards.values()) == len(where), "a tensor is in two shards"
    assert index["weight_map"] == where
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    return index["weight_map"]


def check_fused_groups(out_tensors: dict, weight_map: dict, fused: list, src: Path) -> None:
    """One global scale per group (over the whole group), and the whole group in one shard."""
    tensors = source_tensors(src)
    src_shard = _source_shards(src)
    for members in fused:
        modules = [m.rpartition(".")[0] for m in members]
        scales = [out_tensors[f"{m}.weight_global_scale"] for m in modules]
        want = global_scale_from_absmax(group_absmax([tensors[m] for m in members], preset("NVFP4A16")))
        for s in scales:
            assert torch.equal(raw(s), raw(want)), f"{members}: global scale {s} != group's {want}"
        shards = {weight_map[f"{m}.{local}"] for m in modules
                  for local in ("weight_packed", "weight_scale", "weight_global_scale")}
        assert len(shards) == 1, f"fused group {members} written into {sorted(shards)}"
        assert shards <= {src_shard[m] for m in members}, (members, shards)


def _source_shards(src: Path) -> dict[str, str]:
    """Input shard of every weight name, split 3-D experts included (they live in the fused tensor's shard)."""
    out = {}
    for f in shard_files(src):
        with safe_open(str(f), framework="pt") as fh:
            for name in fh.keys():
                shape = fh.get_slice(name).get_shape()
                for split in reference_split_experts(name, torch.empty(shape, device="meta")):
                    out[split] = f.name
    return out


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    made: dict[tuple, Path] = {}

    def get(variant: str, layout: str, **extra) -> Path:
        key = (variant, layout, tuple(sorted(extra.items())))
        if key not in made:
            arch, dims = ARCHS[variant.replace("_fused", "")]
            root = tmp_path_factory.mktemp(f"src-{variant}-{layout}") / "model"
            made[key] = make_checkpoint(root, arch, **VARIANTS[variant], **LAYOUTS[layout], **dims, **extra)
        return made[key]

    return get


@pytest.fixture(scope="session")
def quantized(checkpoints, tmp_path_factory):
    """Session cache of model_free_ptq outputs: (variant, layout, preset, ignore) -> (src, out, result)."""
    done: dict[tuple, tuple[Path, Path, object]] = {}

    def get(variant: str, layout: str, scheme: str, ignore: tuple[str, ...] = tuple(DEFAULT_IGNORE)):
        key = (variant, layout, scheme, ignore)
        if key not in done:
            src = checkpoints(variant, layout)
            out = tmp_path_factory.mktemp(f"out-{variant}-{layout}-{scheme}") / "quantized"
            result = model_free_ptq(src, out, scheme=scheme, ignore=list(ignore))
            done[key] = (src, out, result)
        return done[key]

    return get


def check_config(out: Path, src: Path, fmt: str, ignore: list[str], n_groups: int = 1) -> dict:
    original = json.loads((src / "config.json").read_text())
    config = json.loads((out / "config.json").read_text())
    qc = config.pop("quantization_config")
    assert config == original, "config.json keys other than quantization_config changed"
    assert qc["quant_method"] == "compressed-tensors"
    assert qc["quantization_status"] == "compressed"
    assert qc["format"] == fmt
    assert qc["version"] == CT_VERSION
    assert qc["ignore"] == ignore
    assert len(qc["config_groups"]) == n_groups
    # the written block parses back as a compressed-tensors QuantizationConfig
    QuantizationConfig.model_validate({k: v for k, v in qc.items() if k not in ("version", "quant_method")})
    return qc


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("scheme", ALL_PRESETS)
def test_llama_every_preset_matches_reference(quantized, scheme):
    """Single shard, peer semantics: only lm_head ignored, so embed_tokens is quantized too."""
    ignore = ("lm_head",)
    src, out, result = quantized("llama", "single", scheme, ignore)
    got = load_tensors(out)
    want, fused, assign = expected_outputs(src, [(scheme, preset(scheme))], ignore)
    assert "model.embed_tokens.weight" in assign and "lm_head.weight" not in assign
    assert_same_tensors(got, want, scheme)
    weight_map = check_index(out, got)
    assert set(weight_map.values()) == {"model.safetensors"}
    qc = check_config(out, src, reference_format(preset(scheme)).value, ["lm_head"])
    (group,) = qc["config_groups"].values()
    assert group["targets"] == ["Linear"]
    assert group["format"] == reference_format(preset(scheme)).value
    if scheme == "NVFP4A16":
        assert len(fused) == 4  # q/k/v and gate/up in 2 layers
        check_fused_groups(got, weight_map, fused, src)
    assert result.size_before == sum(t.numel() * t.element_size() for t in load_tensors(src).values())
    assert result.size_after == sum(t.numel() * t.element_size() for t in got.values())


def _matrix():
    return [pytest.param(variant, layout, scheme, id=f"{variant}-{layout}-{scheme}")
            for variant in VARIANTS for layout in LAYOUTS for scheme in MAIN]


@pytest.mark.parametrize("variant,layout,scheme", _matrix())
def test_architectures_match_reference(quantized, variant, layout, scheme):
    src, out, result = quantized(variant, layout, scheme)
    got = load_tensors(out)
    ignore = list(DEFAULT_IGNORE)
    want, fused, assign = expected_outputs(src, [(scheme, preset(scheme))], ignore)
    assert_same_tensors(got, want, f"{variant}/{layout}/{scheme}")
    weight_map = check_index(out, got)
    if layout == "split":
        in_shards = set(read_index(src)["weight_map"].values())
        assert set(weight_map.values()) <= in_shards
    check_config(out, src, reference_format(preset(scheme)).value, ignore)
    # routers and lm_head are ignored (DEFAULT_IGNORE), so copied byte for byte
    for name in want:
        if name.endswith((".gate.weight", "lm_head.weight", "embed_tokens.weight")):
            assert name not in assign and name in got
    if scheme == "NVFP4A16":
        expected_kinds = {
            "llama": 4, "qwen3_moe": 1 + 3, "qwen3_moe_fused": 1 + 3,
            "deepseek_v3": 2 + 1 + 2 + 1,  # q_a/kv_a x2, dense gate/up, 2 experts, shared experts
            "mixtral": 1 + 3,
        }[variant]
        assert len(fused) == expected_kinds, fused
        assert len(result.plan.fused_groups) == len(fused)
        if layout == "split" and variant != "qwen3_moe_fused":
            # the source really splits these groups across shards
            src_shards = _source_shards(src)
            assert any(len({src_shards[m] for m in g}) > 1 for g in fused)
        check_fused_groups(got, weight_map, fused, src)


@pytest.mark.parametrize("scheme", ["NVFP4A16", "FP8_BLOCK", "W4A16_ASYM"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_qwen3_per_expert_and_fused_experts_give_identical_outputs(quantized, scheme, layout):
    _, out_a, _ = quantized("qwen3_moe", layout, scheme)
    _, out_b, _ = quantized("qwen3_moe_fused", layout, scheme)
    a, b = load_tensors(out_a), load_tensors(out_b)
    assert any(".mlp.experts.2.up_proj." in n for n in a)
    assert_same_tensors(b, a, f"fused vs per-expert {scheme}")


_ELEMENT_BYTES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "BF16": 2, "F16": 2, "I16": 2,
                  "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}


@pytest.mark.parametrize("scheme", ["W4A16_ASYM", "NVFP4A16"])  # int64/int32/bf16 and u8/fp8/bf16/f32
def test_shards_keep_every_tensor_aligned(tmp_path, scheme):
    """Like safetensors' own serializer: the header is padded to 8 bytes and every tensor starts at a
    multiple of its element size, so zero-copy loaders can view the bytes in place. A copied bf16
    tensor of 15 elements (30 bytes) makes any other order misalign what follows it."""
    odd = {"model.layers.0.mlp.odd_proj.weight": torch.ones(3, 5, dtype=torch.bfloat16)}
    src = make_checkpoint(tmp_path / "src", "llama", extra_tensors=odd, **ARCHS["llama"][1])
    out = tmp_path / "out"
    model_free_ptq(src, out, scheme=scheme, ignore=["lm_head", "model.layers.0.mlp.odd_proj"])
    data = (out / "model.safetensors").read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len])
    header.pop("__metadata__", None)
    assert header_len % 8 == 0
    assert len({_ELEMENT_BYTES[info["dtype"]] for info in header.values()}) >= 3, "the case should mix element sizes"
    for name, info in header.items():
        start = info["data_offsets"][0]
        assert start % _ELEMENT_BYTES[info["dtype"]] == 0, f"{name} ({info['dtype']}) starts at byte {start}"


def test_split_and_single_shard_give_identical_tensors(quantized):
    for variant in ("deepseek_v3", "mixtral"):
        _, single, _ = quantized(variant, "single", "NVFP4A16")
        _, split, _ = quantized(variant, "split", "NVFP4A16")
        assert_same_tensors(load_tensors(split), load_tensors(single), variant)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["f16", "f32"])
@pytest.mark.parametrize("scheme", ["NVFP4A16", "FP8_BLOCK", "W4A16_ASYM", "MXFP4A16"])
def test_float16_and_float32_checkpoints(tmp_path, dtype, scheme):
    """Scales follow the weight dtype (the reference's module params); NVFP4 groups still fused."""
    arch, dims = ARCHS["deepseek_v3"]
    src = make_checkpoint(tmp_path / "src", arch, dtype=dtype, shards=2, split_fused=True, **dims)
    out = tmp_path / "out"
    model_free_ptq(src, out, scheme=scheme, ignore=list(DEFAULT_IGNORE))
    got = load_tensors(out)
    want, fused, _ = expected_outputs(src, [(scheme, preset(scheme))], list(DEFAULT_IGNORE))
    assert_same_tensors(got, want, f"{dtype} {scheme}")
    weight_map = check_index(out, got)
    if scheme == "NVFP4A16":
        check_fused_groups(got, weight_map, fused, src)
    if scheme in ("FP8_BLOCK", "W4A16_ASYM"):
        assert got["model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale"].dtype == dtype


def test_side_files_copied_and_bin_not(tmp_path, caplog):
    arch, dims = ARCHS["llama"]
    src = make_checkpoint(tmp_path / "src", arch, bin_stub=True, **dims)
    (src / "original").mkdir()
    (src / "original" / "consolidated.pth").write_bytes(b"x" * 16)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="ptq_core"):
        model_free_ptq(src, out, scheme="FP8_DYNAMIC", ignore=["lm_head"])
    for name in SIDE_FILES:
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    assert not (out / "pytorch_model.bin").exists()
    assert not (out / "original").exists()
    for name in NOT_COPIED:
        assert (src / name).exists() and not (out / name).exists(), name
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "pytorch_model.bin" in r.getMessage()]
    assert warned, [r.getMessage() for r in caplog.records]
    listed = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert listed == sorted([*SIDE_FILES, "config.json", "model.safetensors", INDEX])


@pytest.mark.parametrize("variant,scheme", [("llama", "NVFP4A16"), ("qwen3_moe_fused", "W4A16_ASYM"),
                                            ("deepseek_v3", "FP8_BLOCK")])
def test_max_workers_do_not_change_bytes(checkpoints, tmp_path, variant, scheme):
    src = checkpoints(variant, "split")
    one, three = tmp_path / "w1", tmp_path / "w3"
    model_free_ptq(src, one, scheme=scheme, ignore=list(DEFAULT_IGNORE), max_workers=1)
    model_free_ptq(src, three, scheme=scheme, ignore=list(DEFAULT_IGNORE), max_workers=3)
    files_one = sorted(p.relative_to(one).as_posix() for p in one.rglob("*"))
    files_three = sorted(p.relative_to(three).as_posix() for p in three.rglob("*"))
    assert files_one == files_three
    for rel in files_one:
        if (one / rel).is_file():
            assert (one / rel).read_bytes() == (three / rel).read_bytes(), rel


def _two_group_config() -> QuantizationConfig:
    attn = preset("FP8_DYNAMIC", targets=[r"re:.*self_attn\.(q|k|v|o)_proj$"])
    rest = preset("W4A16", targets=[r"re:.*mlp\..*", r"re:.*self_attn\..*"])  # also matches attention
    return QuantizationConfig(config_groups={"attention": attn, "mlp": rest}, ignore=["lm_head"])


def test_quantization_config_first_matching_group_wins(checkpoints, tmp_path):
    src = checkpoints("qwen3_moe", "split")
    config = _two_group_config()
    before = config.model_dump()
    out = tmp_path / "out"
    model_free_ptq(src, out, config=config, ignore=[r"re:.*\.gate$"])
    assert config.model_dump() == before, "the caller's config was mutated"
    got = load_tensors(out)
    groups = list(config.config_groups.items())
    want, _, assign = expected_outputs(src, groups, ["lm_head", r"re:.*\.gate$"])
    assert assign["model.layers.0.self_attn.q_proj.weight"] == "attention"
    assert assign["model.layers.0.mlp.experts.1.down_proj.weight"] == "mlp"
    assert "model.embed_tokens.weight" not in assign  # targeted by no group: copied as is
    assert_same_tensors(got, want, "two groups")
    assert got["model.layers.0.self_attn.q_proj.weight"].dtype == torch.float8_e4m3fn
    assert got["model.layers.0.mlp.experts.1.down_proj.weight_packed"].dtype == torch.int32
    check_index(out, got)
    qc = check_config(out, src, "mixed-precision", ["lm_head", r"re:.*\.gate$"], n_groups=2)
    assert list(qc["config_groups"]) == ["attention", "mlp"]
    assert qc["config_groups"]["attention"]["targets"] == [r"re:.*self_attn\.(q|k|v|o)_proj$"]
    assert qc["config_groups"]["attention"]["format"] == "float-quantized"
    assert qc["config_groups"]["mlp"]["format"] == "pack-quantized"


def test_quantization_scheme_object(quantized, checkpoints, tmp_path):
    scheme = preset("W4A16_ASYM")
    before = scheme.model_dump()
    src = checkpoints("mixtral", "split")
    out = tmp_path / "out"
    ignore = list(DEFAULT_IGNORE)
    ignore_before = list(ignore)
    model_free_ptq(src, out, scheme=scheme, ignore=ignore)
    assert scheme.model_dump() == before and scheme.format is None, "the caller's scheme was mutated"
    assert ignore == ignore_before
    got = load_tensors(out)
    want, _, _ = expected_outputs(src, [("W4A16_ASYM", preset("W4A16_ASYM"))], ignore)
    assert_same_tensors(got, want, "QuantizationScheme")
    # same bytes as the preset name
    _, by_name, _ = quantized("mixtral", "split", "W4A16_ASYM")
    assert_same_tensors(got, load_tensors(by_name), "scheme object vs name")
    qc = check_config(out, src, "pack-quantized", ignore)
    (group,) = qc["config_groups"].values()
    assert group["targets"] == ["Linear"]
    assert group["weights"]["symmetric"] is False and group["weights"]["num_bits"] == 4


def test_scheme_object_without_targets_gets_linear(checkpoints, tmp_path):
    """Weights-only FP8 block scheme (no activations), empty targets: targets become ["Linear"],
    the format is what compressed-tensors infers for it."""
    scheme = QuantizationScheme(targets=[], weights=preset("FP8_BLOCK").weights)
    src = checkpoints("llama", "single")
    out = tmp_path / "out"
    model_free_ptq(src, out, scheme=scheme, ignore=["lm_head"])
    assert scheme.targets == [] and scheme.format is None
    ref_scheme = QuantizationScheme(targets=["Linear"], weights=preset("FP8_BLOCK").weights)
    fmt = reference_format(ref_scheme).value
    qc = check_config(out, src, fmt, ["lm_head"])
    (group,) = qc["config_groups"].values()
    assert group["targets"] == ["Linear"] and group["format"] == fmt
    want, _, _ = expected_outputs(src, [("FP8_BLOCK-weights-only", ref_scheme)], ["lm_head"])
    assert_same_tensors(load_tensors(out), want, "targets=[]")


def test_progress_callback(checkpoints, tmp_path):
    calls: list[tuple[str, int, int]] = []
    src = checkpoints("deepseek_v3", "split")
    model_free_ptq(src, tmp_path / "out", scheme="NVFP4A16", ignore=list(DEFAULT_IGNORE), max_workers=2,
                   progress=lambda stage, done, total: calls.append((stage, done, total)))
    # a local folder: no download stage; stages come in order, each in one contiguous run
    stages = list(dict.fromkeys(stage for stage, _, _ in calls))
    assert stages == ["validate", "quantize", "write"], stages
    order = [s for s, _, _ in calls]
    assert order == sorted(order, key=stages.index)
    for stage in stages:
        mine = [(d, t) for s, d, t in calls if s == stage]
        totals = {t for _, t in mine}
        assert len(totals) == 1, (stage, mine)
        total = totals.pop()
        assert isinstance(total, int) and total > 0
        done = [d for d, _ in mine]
        assert all(isinstance(d, int) and 0 <= d <= total for d in done), (stage, mine)
        assert done == sorted(done) and done[-1] == total, (stage, mine)
    # quantize counts work units: at least one per fused group, at most one per output weight
    quantize_total = next(t for s, _, t in calls if s == "quantize")
    plan_items = len(load_tensors(src))  # tensors in, 3-D experts none here
    assert 6 <= quantize_total <= plan_items


def test_overwrite_replaces_existing_output(quantized, checkpoints, tmp_path):
    src = checkpoints("llama", "split")
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    (out / "model-00001-of-00003.safetensors").write_bytes(b"garbage")
    (out / "sub").mkdir()
    (out / "sub" / "x").write_text("y")
    model_free_ptq(src, out, scheme="FP8_BLOCK", ignore=list(DEFAULT_IGNORE), overwrite=True)
    assert not (out / "stale.txt").exists() and not (out / "sub").exists()
    _, fresh, _ = quantized("llama", "split", "FP8_BLOCK")
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in fresh.iterdir())
    for name in names:
        assert (out / name).read_bytes() == (fresh / name).read_bytes(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "a work or old folder was left behind"


# --------------------------------------------------------------------------- CUDA (skipped without a GPU)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("device", ["cuda", None, ["cuda:0", "cpu"]], ids=["cuda", "default", "cuda+cpu"])
@pytest.mark.parametrize("scheme", MAIN)
def test_cuda_gives_the_cpu_bytes(checkpoints, tmp_path, scheme, device):
    src = checkpoints("deepseek_v3", "split")
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    model_free_ptq(src, cpu, scheme=scheme, ignore=list(DEFAULT_IGNORE), device="cpu")
    model_free_ptq(src, gpu, scheme=scheme, ignore=list(DEFAULT_IGNORE), device=device, max_workers=2)
    names = sorted(p.name for p in cpu.iterdir())
    assert names == sorted(p.name for p in gpu.iterdir())
    for name in names:
        assert (cpu / name).read_bytes() == (gpu / name).read_bytes(), name
    want, _, _ = expected_outputs(src, [(scheme, preset(scheme))], list(DEFAULT_IGNORE))
    assert_same_tensors(load_tensors(gpu), want, f"cuda {scheme}")


# --------------------------------------------------------------------------- reindex


@pytest.mark.parametrize("variant", ["llama", "deepseek_v3", "mixtral", "qwen3_moe", "qwen3_moe_fused"])
def test_reindex_fused_weights(checkpoints, tmp_path, variant):
    src = checkpoints(variant, "split")
    src_where = {n: s for s, names in output_shards(src).items() for n in names}
    assert any(len({src_where[m] for m in g}) > 1 for g in expected_fused_pairs(src_where)), "source not split"
    out = tmp_path / "reindexed"
    reindex_fused_weights(str(src), str(out), num_workers=1)
    for name in SIDE_FILES + ("config.json",):
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    before, after = load_tensors(src), load_tensors(out)
    assert sorted(before) == sorted(after)  # none lost or duplicated
    for name, t in before.items():
        assert after[name].dtype == t.dtype and torch.equal(raw(after[name]), raw(t)), name
    shards = output_shards(out)
    assert sum(len(v) for v in shards.values()) == len(before)
    index = read_index(out)
    where = {n: s for s, names in shards.items() for n in names}
    assert index["weight_map"] == where
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in before.values())
    for group in expected_fused_pairs(before):
        assert len({where[m] for m in group}) == 1, group
    a, b = tmp_path / "q-orig", tmp_path / "q-reindexed"
    model_free_ptq(src, a, scheme="NVFP4A16", ignore=list(DEFAULT_IGNORE))
    model_free_ptq(out, b, scheme="NVFP4A16", ignore=list(DEFAULT_IGNORE))
    assert_same_tensors(load_tensors(b), load_tensors(a), "reindexed vs original")


def test_two_stacked_calls_with_scheme_objects_keep_their_groups_apart(tmp_path):
    """llm-compressor's own model-free tests stack two calls, each with a ``QuantizationScheme``
    (both named ``config_group_0``): compressed-tensors' merge renames the second group, and
    every module must still resolve to the group it is stored in."""
    from compressed_tensors.quantization import QuantizationScheme, preset_name_to_scheme

    from ptq_core.matching import IgnoreMatcher, match_name

    src = make_checkpoint(tmp_path / "src", "llama")
    mlp = preset_name_to_scheme("FP8_DYNAMIC", [r"re:.*mlp\.(gate|up|down)_proj$"])
    attn = preset_name_to_scheme("W4A16", [r"re:.*self_attn\.(q|k|v|o)_proj$"])
    assert isinstance(mlp, QuantizationScheme)
    model_free_ptq(src, tmp_path / "one", scheme=mlp, ignore=["lm_head"])
    model_free_ptq(tmp_path / "one", tmp_path / "two", scheme=attn, ignore=["lm_head"])
    quant = json.loads((tmp_path / "two" / "config.json").read_text())["quantization_config"]
    assert list(quant["config_groups"]) == ["config_group_0", "config_group_1"]
    tensors = load_tensors(tmp_path / "two")
    ignore = IgnoreMatcher(quant["ignore"])
    for module, group, param in (("model.layers.0.mlp.down_proj", "config_group_0", "weight_scale"),
                                 ("model.layers.1.self_attn.k_proj", "config_group_1", "weight_packed")):
        assert f"{module}.{param}" in tensors
        assert ignore.match(module) is None
        assert any(match_name(module, t) for t in quant["config_groups"][group]["targets"])
