"""The source side as a unit: one side-file rule for folders and the Hub, the disk rule."""

from __future__ import annotations

from collections import namedtuple

import pytest

from factory import make_checkpoint
from ptq_core.checkpoint import open_checkpoint
from ptq_core.errors import DiskSpaceError
from ptq_core import make_job, quantize_job
from ptq_core.repo_files import duplicate_weight_files, select_repo_files
from ptq_core.source import check_disk_space, disk_needed, resolve_source

REPO = [
    "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer.model", "vocab.txt", "merges.txt",
    "chat_template.jinja", "modeling_custom.py", "LICENSE", "NOTICE.md", "README.md", ".gitattributes",
    "pytorch_model.bin", "pytorch_model.bin.index.json", "original/consolidated.00.pth", "onnx/model.onnx",
    "model.gguf",
]


def test_the_side_file_rule():
    assert select_repo_files(REPO) == sorted([
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
        "config.json", "generation_config.json", "tokenizer.json", "tokenizer.model", "vocab.txt", "merges.txt",
        "chat_template.jinja", "modeling_custom.py", "LICENSE", "NOTICE.md",
    ])


def test_subfolders_of_side_files_travel_subfolders_with_weights_do_not():
    repo = ["model.safetensors", "config.json", "modules.json", "1_Pooling/config.json",
            "additional_chat_templates/tool_use.jinja", "original/params.json", "original/consolidated.00.pth",
            "metal/model.bin", "metal/config.json", "onnx/model.onnx", "variant/model.safetensors",
            "variant/config.json", ".cache/x.json", "1_Pooling/README.md"]
    assert select_repo_files(repo) == [
        "1_Pooling/config.json", "additional_chat_templates/tool_use.jinja", "config.json", "model.safetensors",
        "modules.json",
    ]
    assert set(duplicate_weight_files(repo)) == {
        "original/params.json", "original/consolidated.00.pth", "metal/model.bin", "metal/config.json",
        "onnx/model.onnx", "variant/model.safetensors", "variant/config.json",
    }


def test_a_sentence_transformers_folder_keeps_its_pooling_config(tmp_path):
    src = make_checkpoint(tmp_path / "src", "llama")
    (src / "1_Pooling").mkdir()
    (src / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (src / "modules.json").write_text('[{"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]')
    (src / "original").mkdir()
    (src / "original" / "params.json").write_text("{}")
    (src / "original" / "consolidated.00.pth").write_bytes(b"x")
    out = tmp_path / "out"
    quantize_job(make_job(str(src), "FP8_BLOCK"), out)
    assert (out / "1_Pooling" / "config.json").read_text() == '{"pooling_mode_mean_tokens": true}'
    assert (out / "modules.json").exists() and not (out / "original").exists()


def test_a_folder_travels_by_the_same_rule_as_a_hub_repo(tmp_path):
    src = make_checkpoint(tmp_path / "src", "llama", shards=2, bin_stub=True)
    (src / "original").mkdir()
    (src / "original" / "consolidated.00.pth").write_bytes(b"x")
    (src / "notes.md").write_text("not a side file")
    files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    ckpt = open_checkpoint(src)
    hub_rule = [f for f in select_repo_files(files) if not f.endswith(".safetensors") and f != "model.safetensors.index.json"]
    assert list(ckpt.extra_files) == hub_rule
    assert "README.md" not in ckpt.extra_files and "notes.md" not in ckpt.extra_files
    assert set(ckpt.skipped_weight_files) == {"pytorch_model.bin", "original/consolidated.00.pth"}


def test_the_disk_rule(tmp_path, monkeypatch):
    assert disk_needed(1_000, 400) == 1_400
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("shutil.disk_usage", lambda path: usage(10_000, 8_700, 1_300))
    with pytest.raises(DiskSpaceError, match=r"needs about 1\.40 KB \(1\.00 KB download \+ 400 B output\), only 1\.30 KB"):
        check_disk_space(tmp_path, 1_000, 400)
    monkeypatch.setattr("shutil.disk_usage", lambda path: usage(10_000, 8_600, 1_400))
    check_disk_space(tmp_path, 1_000, 400)


def test_a_folder_is_its_own_source(tmp_path):
    src = make_checkpoint(tmp_path / "src", "llama")
    assert resolve_source(str(src), revision=None, token=None, progress=None) == src
