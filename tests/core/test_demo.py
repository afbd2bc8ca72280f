"""demo: the embedded checkpoint ``ptq demo`` quantizes: seeded, two shards, q/k/v split across them."""

from __future__ import annotations

import json

from safetensors.torch import load_file

from ptq_core.checkpoint import open_checkpoint
from ptq_core.demo import write_demo_checkpoint
from ptq_core.planner import plan_checkpoint


def test_two_shards_with_an_index_that_names_every_tensor(tmp_path):
    folder = write_demo_checkpoint(tmp_path / "demo")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == 2
    for shard in shards:
        assert {n for n, s in index["weight_map"].items() if s == shard} == set(load_file(folder / shard))
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 2
    q, k = (index["weight_map"][f"model.layers.0.self_attn.{m}_proj.weight"] for m in "qk")
    assert q != k  # a fused group spread over shards: what reindex and the fused-group planner handle


def test_the_seed_decides_the_bytes(tmp_path):
    a, b, c = (write_demo_checkpoint(tmp_path / n, seed=s) for n, s in (("a", 0), ("b", 0), ("c", 1)))
    shard = sorted(p.name for p in a.glob("*.safetensors"))[0]
    assert (a / shard).read_bytes() == (b / shard).read_bytes() != (c / shard).read_bytes()


def test_it_plans_like_any_folder(tmp_path):
    folder = write_demo_checkpoint(tmp_path / "demo")
    plan = plan_checkpoint(folder, "FP8_BLOCK", ignore=["lm_head"])
    assert plan.quantized and plan.size_before == sum(t.nbytes for t in open_checkpoint(folder).tensors.values())
