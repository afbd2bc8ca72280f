"""Hostile checkpoints: shard names that reach outside the model folder, malformed indexes.

Every case must fail with a typed error before any shard is read, and leave every file
outside the run's own work folder byte-for-byte as it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import pytest
from factory import make_checkpoint, read_index

from ptq_core import model_free_ptq, reindex_fused_weights
from ptq_core.checkpoint import INDEX_NAME, open_checkpoint, validate_shard_name
from ptq_core.errors import CorruptCheckpointError, PtqError, UnsafePathError

DIMS = dict(hidden_size=128, intermediate_size=256, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
            vocab_size=256, num_hidden_layers=1)
SHARD1 = "model-00001-of-00002.safetensors"


@pytest.fixture
def src(tmp_path) -> Path:
    return make_checkpoint(tmp_path / "src", "llama", shards=2, **DIMS)


def digest_tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def point_index_at(src: Path, shard_value, *, tensor: str | None = None) -> str:
    """Map one tensor (default: the first) of the index to ``shard_value``; return the tensor."""
    index = read_index(src)
    tensor = tensor or next(iter(index["weight_map"]))
    index["weight_map"][tensor] = shard_value
    (src / INDEX_NAME).write_text(json.dumps(index))
    return tensor


def no_output_left(out: Path) -> bool:
    return not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.ptq-")]


# --------------------------------------------------------------------------- validate_shard_name


@pytest.mark.parametrize("name,reason", [
    ("/etc/model.safetensors", "is an absolute path"),
    ("\\share\\model.safetensors", "is an absolute path"),
    ("../victim/model.safetensors", "contains '..'"),
    ("..model.safetensors", "contains '..'"),
    ("sub/model.safetensors", r"contains a path separator \(shards in subfolders are not supported\)"),
    ("sub\\model.safetensors", "contains a path separator"),
    ("model\0.safetensors", "contains a NUL byte"),
    ("", "is empty"),
    ("config.json", r"does not end in \.safetensors"),
])
def test_unsafe_shard_names_are_refused(name, reason):
    with pytest.raises(UnsafePathError, match=reason) as info:
        validate_shard_name(name)
    assert "a shard must be a plain *.safetensors file name in the model folder" in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("value", [None, 3, ["a.safetensors"], {"a": 1}])
def test_non_string_shard_names_are_refused(value):
    with pytest.raises(UnsafePathError, match=re.escape(f"shard name {value!r} is a {type(value).__name__}, not a "
                                                        "file name string.")):
        validate_shard_name(value)


def test_plain_names_pass():
    assert validate_shard_name(SHARD1) == SHARD1
    assert validate_shard_name(".hidden.safetensors") == ".hidden.safetensors"


def test_symlink_out_of_the_folder_is_refused(src, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (src / SHARD1).rename(outside / SHARD1)
    (src / SHARD1).symlink_to(outside / SHARD1)
    with pytest.raises(UnsafePathError, match=rf"shard '{SHARD1}' resolves to .*elsewhere/{SHARD1}, outside the "
                                              r"model folder .*; replace the symlink with the file itself"):
        validate_shard_name(SHARD1, src)
    with pytest.raises(UnsafePathError, match=rf"{INDEX_NAME} maps tensor '.+' to a bad shard: shard '{SHARD1}' "
                                              "resolves to"):
        open_checkpoint(src)


def test_symlink_inside_the_folder_is_fine(src):
    (src / SHARD1).rename(src / "real.safetensors.part")
    (src / SHARD1).symlink_to("real.safetensors.part")
    assert validate_shard_name(SHARD1, src) == SHARD1


def test_hugging_face_cache_snapshot_may_link_into_its_blobs(tmp_path):
    """``hf download`` without --local-dir gives snapshots whose files link to ../../blobs."""
    repo = tmp_path / "hub" / "models--org--tiny"
    snapshot = repo / "snapshots" / "0123abcd"
    made = make_checkpoint(tmp_path / "made", "llama", shards=2, **DIMS)
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in made.iterdir():
        blob = repo / "blobs" / hashlib.sha256(file.name.encode()).hexdigest()
        file.rename(blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    ckpt = open_checkpoint(snapshot)
    assert set(ckpt.shards) == {SHARD1, "model-00002-of-00002.safetensors"}
    # ... but not into another repo's blobs.
    other = tmp_path / "hub" / "models--org--other" / "blobs"
    other.mkdir(parents=True)
    target = (snapshot / SHARD1).resolve()
    target.rename(other / "stolen")
    (snapshot / SHARD1).unlink()
    (snapshot / SHARD1).symlink_to(other / "stolen")
    with pytest.raises(UnsafePathError, match="outside the model folder"):
        open_checkpoint(snapshot)


# --------------------------------------------------------------------------- the reported attack


@pytest.mark.parametrize("how", ["absolute", "dotdot"])
@pytest.mark.parametrize("entry", ["quantize", "reindex", "plan"])
def test_index_pointing_at_another_models_shard_touches_nothing(tmp_path, src, how, entry):
    victim = make_checkpoint(tmp_path / "victim", "llama", seed=1, **DIMS)
    before = digest_tree(victim)
    value = str(victim / "model.safetensors") if how == "absolute" else "../victim/model.safetensors"
    tensor = point_index_at(src, value)
    out = tmp_path / "out"
    match = rf"{INDEX_NAME} maps tensor '{tensor}' to a bad shard: shard name '.*victim/model\.safetensors'"
    with pytest.raises(UnsafePathError, match=match) as info:
        if entry == "quantize":
            model_free_ptq(src, out, "FP8_BLOCK")
        elif entry == "reindex":
            reindex_fused_weights(src, out)
        else:
            from ptq_core import plan_checkpoint

            plan_checkpoint(src, "FP8_BLOCK")
    assert isinstance(info.value, PtqError)
    assert digest_tree(victim) == before
    assert no_output_left(out)


def test_index_naming_a_subfolder_shard_is_refused(src, tmp_path):
    (src / "sub").mkdir()
    (src / SHARD1).rename(src / "sub" / SHARD1)
    index = read_index(src)
    index["weight_map"] = {k: (f"sub/{v}" if v == SHARD1 else v) for k, v in index["weight_map"].items()}
    (src / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(UnsafePathError, match="shards in subfolders are not supported"):
        model_free_ptq(src, tmp_path / "out", "FP8_BLOCK")
    assert no_output_left(tmp_path / "out")


# --------------------------------------------------------------------------- malformed index


@pytest.mark.parametrize("weight_map,found", [
    ([["a", SHARD1]], "list"), (7, "int"), (None, "NoneType"), ("x.safetensors", "str"),
])
def test_weight_map_of_the_wrong_type(src, tmp_path, weight_map, found):
    index = read_index(src)
    index["weight_map"] = weight_map
    (src / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CorruptCheckpointError, match=rf"{INDEX_NAME} has no weight_map mapping of tensor name -> "
                                                     rf"shard file \(found {found}\)"):
        model_free_ptq(src, tmp_path / "out", "FP8_BLOCK")
    assert no_output_left(tmp_path / "out")


@pytest.mark.parametrize("text", ["[1, 2]", "{\"weight_map\": {\"a\": 1", "\xff\xfe", "[" * 200_000])
def test_index_that_is_not_an_index(src, tmp_path, text):
    (src / INDEX_NAME).write_bytes(text.encode("latin-1"))
    with pytest.raises(CorruptCheckpointError, match=INDEX_NAME):
        open_checkpoint(src)


def test_index_value_not_a_string(src):
    tensor = point_index_at(src, 12)
    with pytest.raises(UnsafePathError, match=rf"maps tensor '{tensor}' to a bad shard: shard name 12 is a int"):
        open_checkpoint(src)


# --------------------------------------------------------------------------- files the run would drop


def test_shard_missing_from_the_index_is_reported(src, tmp_path, caplog):
    (src / "consolidated.safetensors").write_bytes((src / SHARD1).read_bytes())
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="ptq_core.checkpoint"):
        model_free_ptq(src, out, "FP8_BLOCK")
    assert (f"Not reading and not copying consolidated.safetensors: {INDEX_NAME} does not name them."
            in caplog.messages)
    assert not (out / "consolidated.safetensors").exists()


def test_subfolder_shard_without_index_is_reported(tmp_path, caplog):
    src = make_checkpoint(tmp_path / "src", "llama", **DIMS)
    (src / "original").mkdir()
    (src / "original" / "extra.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    with caplog.at_level(logging.WARNING, logger="ptq_core.checkpoint"):
        ckpt = open_checkpoint(src)
    assert ckpt.shards == ("model.safetensors",)
    assert ("Not reading and not copying original/extra.safetensors: shards in subfolders are not supported."
            in caplog.messages)
