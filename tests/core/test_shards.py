"""sources.shards: which files are a checkpoint's shards, the same rule for a folder and the Hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ptq_core import _http as hub_http
from ptq_core.checkpoint import open_checkpoint
from ptq_core.errors import CorruptCheckpointError
from ptq_core.remote import open_remote_checkpoint
from ptq_core.source import inspect_source
from ptq_core.sources.shards import select_shards

pytestmark = pytest.mark.usefixtures("fast_retries")

ALICE = "hf_test_alice"


@pytest.mark.parametrize(
    ("paths", "weight_map", "expected"),
    [
        (["b.safetensors", "a.safetensors", "config.json"], None, ["a.safetensors", "b.safetensors"]),
        (["consolidated.safetensors", "model.safetensors"], None, ["model.safetensors"]),
        (["model.safetensors", "original/model.safetensors"], None, ["model.safetensors"]),
        (["original/consolidated.safetensors", "x.safetensors"], None, ["x.safetensors"]),
        (["m-2.safetensors", "m-1.safetensors", "model.safetensors"], {"a": "m-2.safetensors", "b": "m-1.safetensors",
                                                                       "c": "m-2.safetensors"},
         ["m-2.safetensors", "m-1.safetensors"]),
        (["config.json"], {"a": "gone.safetensors"}, ["gone.safetensors"]),  # the caller names it missing
        (["config.json", "pytorch_model.bin"], None, []),
    ],
    ids=["top-level-sorted", "model-beside-consolidated", "subfolder-ignored", "only-top-level", "index-order",
         "index-decides", "none"],
)
def test_select_shards(paths, weight_map, expected):
    assert select_shards(paths, weight_map) == expected


def _tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 8, generator=g).to(torch.bfloat16), "norm.weight": torch.ones(8)}


def _write(folder: Path, layout: str) -> Path:
    """The same files a Hub repo would hold, in a folder."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    if layout == "mistral":  # one checkpoint twice (issue 18: "Tensor 'w' appears in both")
        save_file(_tensors(0), folder / "model.safetensors")
        save_file(_tensors(0), folder / "consolidated.safetensors")
    elif layout == "indexed":
        save_file({"w": _tensors(1)["w"]}, folder / "model-00001-of-00002.safetensors")
        save_file({"norm.weight": _tensors(1)["norm.weight"]}, folder / "model-00002-of-00002.safetensors")
        save_file(_tensors(1), folder / "consolidated.safetensors")
        weight_map = {"w": "model-00001-of-00002.safetensors", "norm.weight": "model-00002-of-00002.safetensors"}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    elif layout == "unnamed":  # no model.safetensors: every top-level file is a shard
        save_file({"w": _tensors(2)["w"]}, folder / "part-b.safetensors")
        save_file({"norm.weight": _tensors(2)["norm.weight"]}, folder / "part-a.safetensors")
    return folder


@pytest.mark.parametrize("layout", ["mistral", "indexed", "unnamed"])
def test_folder_and_hub_give_the_same_checkpoint(hub, tmp_path, layout):
    folder = _write(tmp_path / layout, layout)
    hub.seed_repo("bob/same", {p.name: p for p in folder.iterdir()})

    local = open_checkpoint(folder)
    http = hub_http.HubHttp(ALICE)
    state = inspect_source(http, "bob/same", None)
    remote = open_remote_checkpoint(http, state)

    assert remote.shards == local.shards
    assert dict(remote.tensors) == dict(local.tensors)  # names, shards, dtypes, shapes and absolute offsets
    assert remote.extra_files == local.extra_files
    assert remote.metadata == local.metadata
    assert {p for p in state.files if p.endswith(".safetensors")} == set(local.shards)  # nothing else downloaded


def test_model_beside_consolidated_reads_model_only(tmp_path, caplog):
    folder = _write(tmp_path / "m", "mistral")
    checkpoint = open_checkpoint(folder)
    assert checkpoint.shards == ("model.safetensors",)
    assert set(checkpoint.tensors) == {"w", "norm.weight"}
    assert "consolidated.safetensors" in caplog.text and "same weights" in caplog.text


def test_two_unrelated_top_level_files_with_one_tensor_still_fail(tmp_path):
    """Without model.safetensors every top-level file is a shard, so a tensor in two of them is refused."""
    folder = tmp_path / "dup"
    folder.mkdir()
    save_file({"w": torch.zeros(2)}, folder / "a.safetensors")
    save_file({"w": torch.ones(2)}, folder / "b.safetensors")
    with pytest.raises(CorruptCheckpointError, match="appears in both a.safetensors and b.safetensors"):
        open_checkpoint(folder)
