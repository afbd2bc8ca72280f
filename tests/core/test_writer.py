"""writer: shards laid out from the plan before any tensor, filled in any order; the index and config.json."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ptq_core.plan import OutputTensor
from ptq_core.writer import ShardWriter, copy_extra_files, write_config, write_index

TENSORS = [OutputTensor("a.weight", "BF16", (4, 6)), OutputTensor("a.scale", "F32", (4, 1)),
           OutputTensor("b.packed", "U8", (3, 5)), OutputTensor("c.empty", "F32", (0,))]


def _values() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(4, 6, generator=gen).to(torch.bfloat16),
            "a.scale": torch.rand(4, 1, generator=gen),
            "b.packed": torch.randint(0, 255, (3, 5), generator=gen, dtype=torch.uint8),
            "c.empty": torch.zeros(0)}


def test_tensors_written_out_of_order_and_by_rows_load_as_safetensors_saves_them(tmp_path):
    values = _values()
    writer = ShardWriter(tmp_path / "s.safetensors", TENSORS, {"format": "pt"})
    writer.write("b.packed", values["b.packed"])
    writer.write_rows("a.weight", 2, values["a.weight"][2:])
    writer.write_rows("a.weight", 0, values["a.weight"][:2])
    writer.write("a.scale", values["a.scale"])
    writer.write("c.empty", values["c.empty"])
    writer.close()
    loaded = load_file(tmp_path / "s.safetensors")
    assert loaded.keys() == values.keys()
    assert all(torch.equal(loaded[k].view(torch.uint8), values[k].view(torch.uint8)) for k in values)
    assert os.path.getsize(tmp_path / "s.safetensors") == writer.size
    save_file(values, tmp_path / "ref.safetensors", {"format": "pt"})  # same layout as safetensors' own
    with safe_open(tmp_path / "ref.safetensors", "pt") as ref, safe_open(tmp_path / "s.safetensors", "pt") as ours:
        assert ours.metadata() == ref.metadata() == {"format": "pt"}


def test_layout_puts_wider_dtypes_first_so_each_tensor_is_aligned(tmp_path):
    writer = ShardWriter(tmp_path / "s.safetensors", TENSORS)
    writer.abort()
    raw = (tmp_path / "s.safetensors").read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + length])
    assert (8 + length) % 8 == 0
    order = sorted((v["data_offsets"][0], k) for k, v in header.items() if k != "__metadata__")
    assert [k for _, k in order][:2] == ["a.scale", "a.weight"]  # F32 (4 bytes), then BF16, then U8
    assert all(v["data_offsets"][0] % {"F32": 4, "BF16": 2, "U8": 1}[v["dtype"]] == 0
               for k, v in header.items() if k != "__metadata__")


def test_a_tensor_that_does_not_fit_its_plan_is_refused(tmp_path):
    writer = ShardWriter(tmp_path / "s.safetensors", TENSORS)
    with pytest.raises(ValueError, match="do not fit the planned"):
        writer.write("a.scale", torch.zeros(5, 1))
    with pytest.raises(ValueError, match="do not fit the planned"):
        writer.write_rows("a.weight", 3, torch.zeros(2, 6, dtype=torch.bfloat16))
    writer.abort()


def test_close_names_tensors_never_written(tmp_path):
    writer = ShardWriter(tmp_path / "s.safetensors", TENSORS)
    writer.write("a.scale", torch.zeros(4, 1))
    with pytest.raises(RuntimeError, match=r"not fully written: \['a.weight', 'b.packed'"):
        writer.close()


def test_copy_from_moves_bytes_from_an_input_shard(tmp_path):
    values = _values()
    source = tmp_path / "in.bin"
    source.write_bytes(b"xyz" + values["b.packed"].numpy().tobytes())
    writer = ShardWriter(tmp_path / "s.safetensors", [OutputTensor("b.packed", "U8", (3, 5))])
    fd = os.open(source, os.O_RDONLY)
    try:
        writer.copy_from("b.packed", fd, 3)
    finally:
        os.close(fd)
    writer.close()
    assert torch.equal(load_file(tmp_path / "s.safetensors")["b.packed"], values["b.packed"])


def test_an_existing_file_is_never_replaced(tmp_path):
    (tmp_path / "s.safetensors").write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        ShardWriter(tmp_path / "s.safetensors", TENSORS)
    assert (tmp_path / "s.safetensors").read_bytes() == b"keep"


def test_index_is_sorted_with_the_total_size(tmp_path):
    write_index(tmp_path, {"b": "2.safetensors", "a": "1.safetensors"}, 123)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index == {"metadata": {"total_size": 123}, "weight_map": {"a": "1.safetensors", "b": "2.safetensors"}}
    assert list(index["weight_map"]) == ["a", "b"]


def test_config_gets_the_quantization_config_then_the_update_hook(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": {"old": 1}}))
    write_config(tmp_path, {"format": "float-quantized"}, update=lambda c: {**c, "tie_word_embeddings": False})
    assert json.loads((tmp_path / "config.json").read_text()) == {
        "model_type": "llama", "quantization_config": {"format": "float-quantized"}, "tie_word_embeddings": False}
    assert (tmp_path / "config.json").read_text().startswith('{\n  "model_type"')  # sorted keys, indent 2


def test_a_dequantized_copy_drops_the_source_quantization_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "x", "quantization_config": {"fmt": "fp8"}}))
    write_config(tmp_path, None)
    assert json.loads((tmp_path / "config.json").read_text()) == {"model_type": "x"}
    before = (tmp_path / "config.json").read_text()
    write_config(tmp_path, None)  # nothing to drop: the file is left as it is
    assert (tmp_path / "config.json").read_text() == before


def test_without_config_json_the_quantization_config_gets_its_own_file(tmp_path):
    write_config(tmp_path, {"format": "pack-quantized"})
    assert not (tmp_path / "config.json").exists()
    assert json.loads((tmp_path / "quantization_config.json").read_text()) == {"format": "pack-quantized"}


def test_extra_files_are_copied_with_their_folders(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    (src / "1_Pooling").mkdir(parents=True)
    (src / "tokenizer.json").write_text("{}")
    (src / "1_Pooling" / "config.json").write_text('{"p": 1}')
    out.mkdir()
    copy_extra_files(src, out, ["tokenizer.json", "1_Pooling/config.json"])
    assert (out / "1_Pooling" / "config.json").read_text() == '{"p": 1}' and (out / "tokenizer.json").is_file()
