"""reindex: every fused group moved into one shard, each tensor's bytes unchanged (tests/core/test_pipeline.py
checks that the quantized output of a reindexed checkpoint is identical, across architectures)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ptq_core.demo import write_demo_checkpoint
from ptq_core.errors import OutputExistsError
from ptq_core.reindex import reindex_fused_weights


def _tensors(folder):
    return {n: t for shard in sorted(folder.glob("*.safetensors")) for n, t in load_file(shard).items()}


def test_q_k_v_and_gate_up_land_in_one_shard_with_their_bytes(tmp_path):
    src = write_demo_checkpoint(tmp_path / "src")
    out = tmp_path / "out"
    result = reindex_fused_weights(src, out)
    where = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    for layer in range(2):
        attn = {where[f"model.layers.{layer}.self_attn.{m}_proj.weight"] for m in "qkv"}
        mlp = {where[f"model.layers.{layer}.mlp.{m}_proj.weight"] for m in ("gate", "up")}
        assert len(attn) == 1 and len(mlp) == 1
    before, after = _tensors(src), _tensors(out)
    assert before.keys() == after.keys()
    assert all(torch.equal(after[n].view(torch.uint8), before[n].view(torch.uint8)) for n in before)
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(p.name for p in src.glob("*.safetensors"))
    assert (out / "config.json").read_bytes() == (src / "config.json").read_bytes()
    src_where = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    assert result.moved == {n: (src_where[n], where[n]) for n in where if src_where[n] != where[n]} != {}
    assert result.fused_sets == 4 and result.save_directory.resolve() == out.resolve()  # q/k/v and gate/up, 2 layers


def test_an_output_with_files_needs_overwrite(tmp_path):
    src = write_demo_checkpoint(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(OutputExistsError):
        reindex_fused_weights(src, out)
    assert (out / "keep").read_text() == "x"
    reindex_fused_weights(src, out, overwrite=True)
    assert not (out / "keep").exists()
