"""The architecture zoo (issue 17, item 1): every architecture of ``tests/zoo.py``, written by
transformers itself, quantized with the CLI's defaults (``make_job(src, scheme)``: the default
ignore list on) and loaded back in transformers.

Per architecture x scheme:

* it quantizes;
* every module stored quantized resolves, through config.json's written ``ignore`` and each
  group's ``targets`` (compressed-tensors' own ``is_match``), to exactly the one config group,
  and holds that group's format's tensors; every module stored with a plain ``weight`` in the
  model's dtype resolves to no group. A module's class is the one it has in the model
  (``zoo.linear_modules``); per-expert projections (``experts.N.proj``) count as Linear, as
  they do for the format and for vLLM;
* transformers loads it (the model's Auto class, ``output_loading_info=True``) with no missing,
  unexpected or mismatched keys and no conversion errors;
* the logits cosine against the bf16 source (loaded the same way, text-only tokens) is at least
  ``conftest.min_logits_cosine`` of the cosine a correct run measures (``MEASURED``).

Where transformers cannot load a valid checkpoint, the case is a strict, exactly-recognised
loader limit (``LOADER_LIMITS``, the pattern of ``test_transformers_load.py``): the group check
still runs first, then the loader's own failure is expected. A case the core gets wrong is a
plain failure, never an xfail.

Each source model is built once per session (``zoo_model``), its logits computed once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import import_tool
from test_transformers_load import LoaderLimit, check_cosine, cosine, expect_loader_limit
from zoo import ZOO, ZooArch, build, linear_modules

from ptq_core import make_job, quantize_job

transformers = import_tool("transformers", "transformers is not installed (pip install -e '.[test]')")
from compressed_tensors.utils import is_match  # noqa: E402  (transformers pulls it in as its loader)
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText  # noqa: E402

pytestmark = pytest.mark.slow

SCHEMES = ("FP8_BLOCK", "NVFP4A16", "W4A16", "MXFP4A16", "FP8_DYNAMIC")
# Text-only batch; ids 500-511 are the zoo's multimodal special tokens.
TOKENS = torch.tensor([
    [1, 17, 301, 45, 9, 250, 77, 128, 3, 499, 64, 200, 12, 33, 410, 8],
    [1, 400, 2, 19, 88, 311, 5, 6, 120, 240, 480, 7, 99, 150, 42, 11],
])

# The stored tensors of a quantized module, per compressed-tensors format.
FORMAT_TENSORS = {
    "float-quantized": {"weight", "weight_scale"},
    "nvfp4-pack-quantized": {"weight_packed", "weight_scale", "weight_global_scale"},
    "mxfp4-pack-quantized": {"weight_packed", "weight_scale"},
    "pack-quantized": {"weight_packed", "weight_scale", "weight_shape"},
}
_QUANT_LOCALS = {"weight_packed", "weight_scale", "weight_global_scale", "weight_shape", "weight_zero_point"}
_EXPERT = re.compile(r"\.experts\.\d+\.[^.]+$")

# What the CLI's defaults must keep in the model's dtype, whatever the family calls it
# (DESIGN.md, Matching): every embedding and vocab-sized head, MoE routers, vision towers
# and multimodal projectors. Regexes on the checkpoint's module names.
KEEP_UNQUANTIZED = {
    "embedding": re.compile(r"(^|\.)(embed_tokens|embed_in|word_embeddings|position_embedding|patch_embedding)$"),
    "vocab-sized head": re.compile(r"(^|\.)(lm_head|embed_out)$"),
    "MoE router": re.compile(r"\.(gate|router)(\.layer)?$"),
    "vision tower or projector": re.compile(r"^(model\.)?(visual|vision_tower|vision_model|multi_modal_projector)\."),
}

# The logits cosine of a correct run, per "arch/scheme" (transformers 5.25, torch 2.13, CPU, bf16).
MEASURED: dict[str, float] = {}

# "arch/scheme" -> the loader's exact failure on a valid checkpoint.
LOADER_LIMITS: dict[str, LoaderLimit] = {}


# --------------------------------------------------------------------------- fixtures and helpers


class _Zoo:
    """Source checkpoints built on first use, with their bf16 logits."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: dict[str, tuple[Path, torch.Tensor]] = {}

    def __call__(self, name: str) -> tuple[Path, torch.Tensor]:
        if name not in self.made:
            path = build(ZOO[name], self.root / name)
            self.made[name] = (path, logits(ZOO[name], path))
        return self.made[name]


@pytest.fixture(scope="session")
def zoo_model(tmp_path_factory):
    """``zoo_model(name) -> (checkpoint folder, bf16 logits)``, each built once per session."""
    return _Zoo(tmp_path_factory.mktemp("zoo"))


def logits(arch: ZooArch, path: Path) -> torch.Tensor:
    """Load ``path`` with the architecture's Auto class; fail on any key the load left behind."""
    auto = AutoModelForImageTextToText if arch.vlm else AutoModelForCausalLM
    model, info = auto.from_pretrained(path, dtype=torch.bfloat16, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    assert not problems, f"{path.name}: loading left {problems}"
    model.eval()
    with torch.no_grad():
        return model(input_ids=TOKENS).logits.float()


def stored_modules(folder: Path) -> dict[str, dict[str, str]]:
    """module -> {local tensor name -> dtype} of a checkpoint, from its index and shard headers."""
    from safetensors import safe_open

    modules: dict[str, dict[str, str]] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            for name in f.keys():
                module, _, local = name.rpartition(".")
                modules.setdefault(module, {})[local] = f.get_slice(name).get_dtype()
    return modules


def check_groups(src: Path, out: Path) -> None:
    """Every stored module resolves, through the written ``ignore`` and ``targets``, to the group it
    is stored with (quantized) or to none (stored as a plain weight); and nothing the defaults must
    keep (``KEEP_UNQUANTIZED``) is stored quantized."""
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    groups, ignore = qc["config_groups"], qc.get("ignore") or []
    linear = linear_modules(src)
    source_dtype = {m: ts.get("weight") for m, ts in stored_modules(src).items()}
    problems = []
    for module, tensors in stored_modules(out).items():
        quantized = bool(_QUANT_LOCALS & set(tensors)) or tensors.get("weight") == "F8_E4M3"
        if not quantized and "weight" not in tensors:
            continue  # no weight (biases, fused 3-D experts without a .weight suffix, buffers)
        stand_in = torch.nn.Linear(1, 1, device="meta") if module in linear or _EXPERT.search(module) \
            else torch.nn.Module()
        matched = [g for g, cfg in groups.items() if is_match(module, stand_in, cfg["targets"], ignore)]
        if quantized:
            kept = [why for why, pattern in KEEP_UNQUANTIZED.items() if pattern.search(module)]
            if kept:
                problems.append(f"{module}: stored quantized, but the defaults must keep a {kept[0]} unquantized")
            if len(matched) != 1:
                problems.append(f"{module}: stored quantized ({sorted(tensors)}), resolves to groups {matched}")
                continue
            fmt = groups[matched[0]].get("format") or qc["format"]
            if set(tensors) - {"bias"} != FORMAT_TENSORS[fmt]:
                problems.append(f"{module}: stored {sorted(tensors)}, group {matched[0]} ({fmt}) wants "
                                f"{sorted(FORMAT_TENSORS[fmt])}")
        else:
            if matched:
                problems.append(f"{module}: stored unquantized ({tensors['weight']}), resolves to group {matched}")
            if module in source_dtype and tensors["weight"] != source_dtype[module]:
                problems.append(f"{module}: stored as {tensors['weight']}, source {source_dtype[module]}")
    assert not problems, f"{out.name}: modules that do not resolve to what they are stored as:\n" + \
        "\n".join(problems)


# --------------------------------------------------------------------------- tests


def test_every_case_has_one_measured_cosine():
    """MEASURED holds exactly the zoo's cases, so no bound is silently missing."""
    assert set(MEASURED) == {f"{arch}/{s}" for arch in ZOO for s in SCHEMES}
    assert set(LOADER_LIMITS) <= set(MEASURED)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("arch", list(ZOO))
def test_zoo_quantizes_loads_and_matches(zoo_model, tmp_path, arch, scheme):
    src, base = zoo_model(arch)
    out = tmp_path / "out"
    quantize_job(make_job(str(src), scheme), out)  # the CLI's defaults: default_ignore=True
    check_groups(src, out)
    case = f"{arch}/{scheme}"
    measured = MEASURED.get(case)

    def load_and_compare() -> None:
        got = logits(ZOO[arch], out)
        cos = cosine(got, base)
        if measured is None:
            print(f"logits cosine {case}: {cos:.5f} (no MEASURED entry)")
            pytest.fail(f"{case}: no MEASURED cosine; this run measured {cos:.5f}")
        check_cosine(case, cos, measured)

    limit = LOADER_LIMITS.get(case)
    if limit is None:
        load_and_compare()
    else:
        expect_loader_limit(case, limit, load_and_compare)
