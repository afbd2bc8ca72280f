"""Fused 3-D MoE experts: each family's stored layout gives, tensor for tensor, what its per-expert
checkpoint gives (and that is compressed-tensors' reference), under the names the loaders read.

Families (ptq_core/experts.py has the decision table and its evidence):
Qwen3-MoE and Mixtral from ``factory.make_checkpoint(fused_experts=True)``; Llama-4 (stored
in x out, gate then up on the last axis, a VLM ``text_config``), GraniteMoE (``input_linear`` /
``output_linear``) and GPT-OSS (interleaved, with biases; refused) are written here from the
same per-expert numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from factory import load_tensors, make_checkpoint
from reference import preset
from safetensors.torch import save_file
from core.test_pipeline import assert_same_tensors, expected_outputs

import ptq_core
from ptq_core import model_free_ptq
from ptq_core.errors import ExpertLayoutError
from ptq_core.experts import COLUMNS, INTERLEAVED, ROWS, ExpertRules, expert_part
from ptq_core.job import make_job
from ptq_core.parts import _unit_bytes
from ptq_core.units import unit_reads, work_units

SCHEMES = ["NVFP4A16", "W4A16", "FP8_BLOCK"]
E, H, I = 3, 128, 256  # I != H: a transposed or swapped axis cannot pass unnoticed


def _rand(seed: int, *shape: int) -> torch.Tensor:
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.02).to(torch.bfloat16)


def _write(root: Path, tensors: dict[str, torch.Tensor], config: dict, shards: int = 1) -> Path:
    """A checkpoint folder: ``shards`` safetensors files (tensors dealt in order) and config.json."""
    root.mkdir(parents=True)
    names = list(tensors)
    if shards == 1:
        save_file({n: tensors[n].contiguous() for n in names}, str(root / "model.safetensors"))
    else:
        per = -(-len(names) // shards)
        weight_map = {}
        for s in range(shards):
            file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            chunk = names[s * per:(s + 1) * per]
            save_file({n: tensors[n].contiguous() for n in chunk}, str(root / file))
            weight_map.update({n: file for n in chunk})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        (root / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (root / "config.json").write_text(json.dumps(config))
    return root


def _experts(layer: int, hidden: int = H, inter: int = I) -> tuple[list, list, list]:
    """Per-expert (out x in) gate, up, down weights of one layer."""
    seed = 1000 * (layer + 1)
    gate = [_rand(seed + 10 * e, inter, hidden) for e in range(E)]
    up = [_rand(seed + 10 * e + 1, inter, hidden) for e in range(E)]
    down = [_rand(seed + 10 * e + 2, hidden, inter) for e in range(E)]
    return gate, up, down


def llama4(root: Path, *, fused: bool, layers: int = 1, hidden: int = H, inter: int = I, shards: int = 1) -> Path:
    """Llama-4 as transformers saves it: ``feed_forward.experts.gate_up_proj`` [E, H, 2I] (in x out,
    gate then up on the last axis), ``down_proj`` [E, I, H]; dims in the VLM's ``text_config``."""
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(layers):
        p = f"language_model.model.layers.{layer}"
        tensors[f"{p}.self_attn.q_proj.weight"] = _rand(layer, hidden, hidden)
        tensors[f"{p}.feed_forward.router.weight"] = _rand(layer + 50, E, hidden)
        gate, up, down = _experts(layer, hidden, inter)
        if fused:
            tensors[f"{p}.feed_forward.experts.gate_up_proj"] = torch.stack(
                [torch.cat([g.t(), u.t()], dim=1) for g, u in zip(gate, up)])
            tensors[f"{p}.feed_forward.experts.down_proj"] = torch.stack([d.t() for d in down])
        else:
            for e in range(E):
                tensors[f"{p}.feed_forward.experts.{e}.gate_proj.weight"] = gate[e]
                tensors[f"{p}.feed_forward.experts.{e}.up_proj.weight"] = up[e]
                tensors[f"{p}.feed_forward.experts.{e}.down_proj.weight"] = down[e]
        tensors[f"{p}.input_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    config = {"model_type": "llama4", "architectures": ["Llama4ForConditionalGeneration"],
              "text_config": {"model_type": "llama4_text", "hidden_size": hidden, "intermediate_size": inter,
                              "intermediate_size_mlp": 2 * inter, "num_local_experts": E},
              "vision_config": {"hidden_size": 64, "intermediate_size": 128}}
    return _write(root, tensors, config, shards)


def granitemoe(root: Path, *, fused: bool) -> Path:
    """GraniteMoE: ``block_sparse_moe.input_linear.weight`` [E, 2I, H], ``output_linear.weight`` [E, H, I]."""
    p = "model.layers.0"
    gate, up, down = _experts(0)
    tensors = {f"{p}.self_attn.q_proj.weight": _rand(0, H, H), f"{p}.block_sparse_moe.router.layer.weight": _rand(7, E, H)}
    if fused:
        tensors[f"{p}.block_sparse_moe.input_linear.weight"] = torch.stack([torch.cat([g, u]) for g, u in zip(gate, up)])
        tensors[f"{p}.block_sparse_moe.output_linear.weight"] = torch.stack(down)
    else:
        for e in range(E):
            tensors[f"{p}.block_sparse_moe.experts.{e}.gate_proj.weight"] = gate[e]
            tensors[f"{p}.block_sparse_moe.experts.{e}.up_proj.weight"] = up[e]
            tensors[f"{p}.block_sparse_moe.experts.{e}.down_proj.weight"] = down[e]
    config = {"model_type": "granitemoe", "hidden_size": H, "intermediate_size": I, "num_local_experts": E}
    return _write(root, tensors, config)


def gpt_oss(root: Path) -> Path:
    """GPT-OSS bf16: gate/up interleaved on the last axis of [E, H, 2I], biases [E, 2I] / [E, H]."""
    p = "model.layers.0"
    gate, up, down = _experts(0)
    gate_up = torch.empty(E, H, 2 * I, dtype=torch.bfloat16)
    gate_up[..., ::2] = torch.stack([g.t() for g in gate])
    gate_up[..., 1::2] = torch.stack([u.t() for u in up])
    tensors = {
        f"{p}.self_attn.q_proj.weight": _rand(0, H, H),
        f"{p}.mlp.router.weight": _rand(7, E, H),
        f"{p}.mlp.experts.gate_up_proj": gate_up,
        f"{p}.mlp.experts.gate_up_proj_bias": _rand(8, E, 2 * I),
        f"{p}.mlp.experts.down_proj": torch.stack([d.t() for d in down]),
        f"{p}.mlp.experts.down_proj_bias": _rand(9, E, H),
    }
    config = {"model_type": "gpt_oss", "hidden_size": H, "intermediate_size": I, "num_local_experts": E}
    return _write(root, tensors, config)


_MOE_DIMS = dict(hidden_size=128, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                 vocab_size=256)


def _pair(tmp_path: Path, family: str) -> tuple[Path, Path, list[str]]:
    """(fused source, per-expert source, ignore) of one family, the same numbers in both."""
    if family == "qwen3_moe":
        dims = dict(_MOE_DIMS, moe_intermediate_size=256, num_experts=E)
        make = lambda root, fused: make_checkpoint(root, "qwen3_moe", fused_experts=fused, **dims)  # noqa: E731
        ignore = ["re:.*mlp\\.gate$", "lm_head"]
    elif family == "mixtral":
        dims = dict(_MOE_DIMS, intermediate_size=256, num_local_experts=E)
        make = lambda root, fused: make_checkpoint(root, "mixtral", fused_experts=fused, **dims)  # noqa: E731
        ignore = ["re:.*\\.gate$", "lm_head"]
    elif family == "llama4":
        make, ignore = llama4, ["re:.*router$"]
    elif family == "llama4_square":  # 2I == H: [E, H, 2I] and [E, 2I, H] look alike; the family decides
        make = lambda root, fused: llama4(root, fused=fused, hidden=256, inter=128)  # noqa: E731
        ignore = ["re:.*router$"]
    else:
        make, ignore = granitemoe, ["re:.*router.*"]
    return make(tmp_path / "fused", fused=True), make(tmp_path / "per-expert", fused=False), ignore


# Per family, one per-expert output name the loaders read (and that the output must contain).
LOADER_NAMES = {
    "qwen3_moe": "model.layers.0.mlp.experts.2.up_proj.",
    "mixtral": "model.layers.0.block_sparse_moe.experts.2.w3.",
    "llama4": "language_model.model.layers.0.feed_forward.experts.2.up_proj.",
    "llama4_square": "language_model.model.layers.0.feed_forward.experts.2.up_proj.",
    "granitemoe": "model.layers.0.block_sparse_moe.experts.2.up_proj.",
}


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("family", list(LOADER_NAMES))
def test_fused_experts_give_the_per_expert_output(tmp_path, family, scheme):
    fused_src, per_expert_src, ignore = _pair(tmp_path, family)
    out_fused, out_ref = tmp_path / "out-fused", tmp_path / "out-per-expert"
    model_free_ptq(fused_src, out_fused, scheme=scheme, ignore=ignore, max_workers=2)
    model_free_ptq(per_expert_src, out_ref, scheme=scheme, ignore=ignore)
    got, per_expert = load_tensors(out_fused), load_tensors(out_ref)
    assert any(n.startswith(LOADER_NAMES[family]) for n in got), sorted(got)[:8]
    assert not any(t.ndim == 3 for n, t in got.items() if "expert" in n or "linear" in n)
    assert_same_tensors(got, per_expert, f"{family} fused vs per-expert {scheme}")
    # and the per-expert output is compressed-tensors' reference quantization
    want, _, _ = expected_outputs(per_expert_src, [(scheme, preset(scheme))], ignore)
    assert_same_tensors(per_expert, want, f"{family} per-expert vs reference {scheme}")
    index = json.loads((out_fused / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(got)


def test_mixtral_router_moves_with_its_experts(tmp_path):
    """transformers-5 native Mixtral keeps every MoE tensor under ``.mlp.``; the original format the
    loaders read has them under ``.block_sparse_moe.`` (router included)."""
    fused_src, _, ignore = _pair(tmp_path, "mixtral")
    plan = ptq_core.plan_checkpoint(fused_src, "FP8_BLOCK", ignore=ignore)
    names = {i.name for i in plan.items}
    assert "model.layers.0.block_sparse_moe.gate.weight" in names
    assert not any(".mlp." in n for n in names)
    assert {"model.layers.0.block_sparse_moe.experts.0.w1.weight", "model.layers.0.block_sparse_moe.experts.0.w3.weight",
            "model.layers.0.block_sparse_moe.experts.0.w2.weight"} <= names


def test_gpt_oss_experts_are_refused_and_kept_fused_when_ignored(tmp_path):
    src = gpt_oss(tmp_path / "gpt-oss")
    with pytest.raises(ExpertLayoutError, match=r"model\.layers\.0\.mlp\.experts\.(gate_up|down)_proj: fused MoE "
                                                r"experts \[3, \d+, \d+\] are not split, because GPT-OSS: no loader reads"
                                                r".*Add 'model\.layers\.0\.mlp\.experts' to ignore"):
        model_free_ptq(src, tmp_path / "refused", scheme="FP8_BLOCK")
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "out"
    model_free_ptq(src, out, scheme="FP8_BLOCK", ignore=["re:.*mlp\\.experts$", "re:.*router$"])
    got, source = load_tensors(out), load_tensors(src)
    for name in ("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"):
        full = f"model.layers.0.mlp.experts.{name}"
        assert torch.equal(got[full], source[full]), full  # weights and biases stay fused together, as is
    assert got["model.layers.0.self_attn.q_proj.weight"].dtype == torch.float8_e4m3fn


def test_the_front_end_defaults_keep_gpt_oss_experts_fused_and_quantize_the_rest(tmp_path):
    from ptq_core import make_job, quantize_job

    src = gpt_oss(tmp_path / "gpt-oss")
    out = tmp_path / "out"
    result = quantize_job(make_job(str(src), "FP8_BLOCK"), out)
    assert r"re:.*mlp\.experts$" in result.plan.resolved.ignore
    assert result.plan.skipped["model.layers.0.mlp.experts.gate_up_proj"].startswith("default: GPT-OSS MoE experts kept fused")
    # vLLM asks about the MoE layer by its per-expert names (compressed_tensors_moe.py): those match too
    from ptq_core.matching import IgnoreMatcher

    ignore = IgnoreMatcher(result.plan.resolved.ignore)
    assert ignore.match("model.layers.0.mlp.experts") and ignore.match("model.layers.0.mlp.experts.0.gate_proj")
    assert ignore.match("model.layers.0.mlp.router") is not None and ignore.match("model.layers.0.self_attn.q_proj") is None
    got, source = load_tensors(out), load_tensors(src)
    assert torch.equal(got["model.layers.0.mlp.experts.down_proj"], source["model.layers.0.mlp.experts.down_proj"])
    assert got["model.layers.0.self_attn.q_proj.weight"].dtype == torch.float8_e4m3fn


@pytest.mark.parametrize(
    ("config", "why"),
    [
        ({"model_type": "qwen3_moe", "hidden_size": H, "moe_intermediate_size": 64, "num_experts": E},
         r"Qwen-MoE stores it as \[3, 128, 128\] \(\[experts, out, in\] from num_experts=3, hidden_size=128, "
         r"moe_intermediate_size=64"),
        ({"model_type": "qwen3_moe", "hidden_size": H, "moe_intermediate_size": I},
         r"config.json has no num_experts / num_local_experts / n_routed_experts"),
        ({"model_type": "some_new_moe", "hidden_size": H}, r"model_type some_new_moe is not a MoE family"),
        ({}, r"there is no config.json"),
    ],
    ids=["dims-differ", "no-expert-count", "unknown-family", "no-config"],
)
def test_unidentifiable_fused_experts_are_refused_by_name(tmp_path, config, why):
    gate, up, _ = _experts(0)
    tensors = {"model.layers.0.mlp.experts.gate_up_proj": torch.stack([torch.cat([g, u]) for g, u in zip(gate, up)]),
               "model.layers.0.self_attn.q_proj.weight": _rand(0, H, H)}
    src = _write(tmp_path / "src", tensors, config)
    if not config:
        (src / "config.json").unlink()
    with pytest.raises(ExpertLayoutError, match=r"model\.layers\.0\.mlp\.experts\.gate_up_proj: .*" + why):
        model_free_ptq(src, tmp_path / "out", scheme="W4A16")
    # ignoring the experts' module copies the fused tensors as they are
    model_free_ptq(src, tmp_path / "kept", scheme="W4A16", ignore=["model.layers.0.mlp.experts"])
    assert torch.equal(load_tensors(tmp_path / "kept")["model.layers.0.mlp.experts.gate_up_proj"],
                       tensors["model.layers.0.mlp.experts.gate_up_proj"])


def test_expert_part_cuts_each_layout():
    gate, up = torch.arange(12.).view(3, 4), 100 + torch.arange(12.).view(3, 4)  # (out=3, in=4)
    rows = torch.cat([gate, up])
    columns = torch.cat([gate.t(), up.t()], dim=1)
    interleaved = torch.stack([gate.t(), up.t()], dim=-1).reshape(4, 6)
    for stored, layout in ((rows, ROWS), (columns, COLUMNS), (interleaved, INTERLEAVED)):
        assert torch.equal(expert_part(stored, layout, 0, 2), gate), layout
        assert torch.equal(expert_part(stored, layout, 1, 2), up), layout


def test_names_and_layouts_per_family():
    parts = ExpertRules({"model_type": "mixtral", "hidden_size": H, "intermediate_size": I, "num_local_experts": E}
                        ).split("model.layers.3.mlp.experts.gate_up_proj", (E, 2 * I, H))
    assert [(p.name, p.layout, p.shape) for p in parts[:2]] == [
        ("model.layers.3.block_sparse_moe.experts.0.w1.weight", ROWS, (I, H)),
        ("model.layers.3.block_sparse_moe.experts.0.w3.weight", ROWS, (I, H))]
    rules = ExpertRules({"model_type": "llama4", "text_config": {"hidden_size": H, "intermediate_size": I,
                                                                 "num_local_experts": E, "model_type": "llama4_text"}})
    (down, *_) = rules.split("m.layers.0.feed_forward.experts.down_proj", (E, I, H))
    assert (down.name, down.layout, down.shape) == ("m.layers.0.feed_forward.experts.0.down_proj.weight", COLUMNS, (H, I))


def test_sliced_parts_are_read_once_and_counted(tmp_path):
    """A transposed expert's gate and up share one read of the expert's slice (one work unit), and the
    RAM estimate counts that slice and the parts cut from it."""
    src = llama4(tmp_path / "l4", fused=True)
    plan = ptq_core.plan_checkpoint(src, "W4A16", ignore=["re:.*router$"])
    checkpoint = ptq_core.checkpoint.open_checkpoint(src)
    info = checkpoint.tensors["language_model.model.layers.0.feed_forward.experts.gate_up_proj"]
    units = work_units(plan, checkpoint)
    gate_up = [u for u in units if any(i.source.tensor == info.name for i in u)]
    assert len(gate_up) == E and all(len(u) == 2 for u in gate_up)
    per_expert = info.nbytes // E
    for unit in gate_up:
        (read,) = unit_reads(checkpoint, unit)
        assert read[2] == per_expert
    assert max(v for k, v in _unit_bytes(plan).items() if isinstance(k, tuple)) == 2 * per_expert


@pytest.mark.parametrize("scheme", ["NVFP4A16", "W4A16"])  # gate/up in one fused group, or two units' worth in one
def test_streamed_hub_job_splits_transposed_experts_like_a_local_run(hub, tmp_path, scheme):
    """Range reads of whole expert slices, cut in memory, through the streamed Hub reader."""
    src = llama4(tmp_path / "l4", fused=True, layers=2, shards=2)
    hub.configure(lfs_threshold=64 * 1024)
    hub.seed_repo("bob/tiny-llama4", {p.name: p for p in src.iterdir() if p.is_file()})
    result = ptq_core.quantize_to_hub("bob/tiny-llama4", scheme, token="hf_test_alice", work_dir=tmp_path / "work",
                                      workers=2, ignore=["re:.*router$"])
    local = tmp_path / "local"
    ptq_core.quantize_job(make_job(str(src), scheme, ignore=["re:.*router$"]), local)
    for path in local.glob("*.safetensors*"):
        assert hub.read_file(result.repo_id, path.name) == path.read_bytes(), path.name
    got = load_tensors(local)
    assert "language_model.model.layers.1.feed_forward.experts.2.up_proj.weight_packed" in got
    assert result.footprint is not None
    # and equal to the per-expert source's output
    per_expert = llama4(tmp_path / "l4-per-expert", fused=False, layers=2)
    ptq_core.quantize_job(make_job(str(per_expert), scheme, ignore=["re:.*router$"]), tmp_path / "local-pe")
    assert_same_tensors(got, load_tensors(tmp_path / "local-pe"), "streamed fused vs per-expert")
