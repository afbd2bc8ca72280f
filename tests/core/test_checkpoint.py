"""checkpoint: the one header -> tensor-table step, and a folder opened by the shard rule."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from ptq_core.checkpoint import TensorInfo, open_checkpoint, tensor_table
from ptq_core.errors import CorruptCheckpointError, MissingShardError, NoSafetensorsError
from ptq_core.sources.safetensors_header import read_header


def _entry(dtype: str, shape: list[int], begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def test_tensor_table_makes_offsets_absolute_and_keeps_metadata():
    parsed = [
        ("a.safetensors", ({"x": _entry("BF16", [2, 2], 0, 8), "y": _entry("F32", [1], 8, 12)}, 100, {"format": "pt"})),
        ("b.safetensors", ({"z": _entry("U8", [3], 0, 3)}, 64, {})),
    ]
    tensors, metadata = tensor_table(parsed, {"x": "a.safetensors", "z": "b.safetensors"})
    assert tensors == {
        "x": TensorInfo("x", "a.safetensors", "BF16", (2, 2), 100, 8),
        "y": TensorInfo("y", "a.safetensors", "F32", (1,), 108, 4),
        "z": TensorInfo("z", "b.safetensors", "U8", (3,), 64, 3),
    }
    assert metadata == {"a.safetensors": {"format": "pt"}, "b.safetensors": {}}


def test_tensor_table_refuses_a_tensor_in_two_shards():
    parsed = [("a.safetensors", ({"x": _entry("U8", [1], 0, 1)}, 8, {})),
              ("b.safetensors", ({"x": _entry("U8", [1], 0, 1)}, 8, {}))]
    with pytest.raises(CorruptCheckpointError, match="'x' appears in both a.safetensors and b.safetensors"):
        tensor_table(parsed, None)


@pytest.mark.parametrize("weight_map", [{"x": "b.safetensors"}, {"gone": "a.safetensors"}], ids=["wrong-shard", "absent"])
def test_tensor_table_checks_the_index(weight_map):
    parsed = [("a.safetensors", ({"x": _entry("U8", [1], 0, 1)}, 8, {}))]
    with pytest.raises(MissingShardError, match="maps tensor"):
        tensor_table(parsed, weight_map)


def test_open_checkpoint_is_the_tables_of_its_headers(tmp_path):
    save_file({"w": torch.zeros(2, 3), "b": torch.ones(3)}, tmp_path / "model.safetensors")
    save_file({"w": torch.ones(2, 3)}, tmp_path / "consolidated.safetensors")  # the same weights, other names
    checkpoint = open_checkpoint(tmp_path)
    tensors, metadata = tensor_table([("model.safetensors", read_header(tmp_path / "model.safetensors"))], None)
    assert (checkpoint.shards, dict(checkpoint.tensors), dict(checkpoint.metadata)) == (
        ("model.safetensors",), tensors, metadata)


def test_open_checkpoint_without_safetensors_names_what_it_found(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"0")
    with pytest.raises(NoSafetensorsError, match="pytorch_model.bin"):
        open_checkpoint(tmp_path)
