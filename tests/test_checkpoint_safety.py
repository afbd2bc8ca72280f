"""Hostile checkpoints: shard names that reach outside the model folder, malformed indexes.

Every case must fail with a typed error before any shard is read, and leave every file
outside the run's own work folder byte-for-byte as it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import struct
import time
from pathlib import Path

import pytest
from factory import make_checkpoint, read_index
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import deserialize

from ptq_core import model_free_ptq, reindex_fused_weights
from ptq_core.checkpoint import INDEX_NAME, open_checkpoint
from ptq_core.sources.safetensors_header import DTYPE_SIZES, read_header
from ptq_core.sources.shards import validate_shard_name
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


# --------------------------------------------------------------------------- header validation


def write_shard(path: Path, header: dict | str | bytes, data: int | bytes = 0) -> Path:
    """A safetensors file from a raw header (object, JSON text or bytes) and ``data`` bytes."""
    raw = header if isinstance(header, bytes) else (
        header if isinstance(header, str) else json.dumps(header)).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + (data if isinstance(data, bytes) else b"\0" * data))
    return path


def t(dtype="F32", shape=(2,), offsets=(0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


@pytest.mark.parametrize("header,data,message", [
    ({"a": t(dtype=["F32"])}, 8, r"tensor 'a' has unknown dtype \['F32'\]; supported: F64, F32"),
    ({"a": t(dtype="F128")}, 8, r"tensor 'a' has unknown dtype 'F128'"),
    ({"a": t(shape=[-2])}, 8, r"tensor 'a': shape \[-2\] is not a list of at most 64 non-negative integers"),
    ({"a": t(shape=[2.0])}, 8, r"shape \[2\.0\] is not a list"),
    ({"a": t(shape=[True, 2])}, 8, r"shape \[True, 2\] is not a list"),
    ({"a": {**t(), "shape": 2}}, 8, r"shape 2 is not a list"),
    ({"a": t(shape=[1] * 65 , offsets=(0, 4))}, 4, r"is not a list of at most 64"),
    ({"a": t(shape=[1 << 64])}, 8, r"shape \[18446744073709551616\] is not a list"),
    ({"a": t(shape=[1 << 32, 1 << 32])}, 8, r"tensor 'a': shape \[4294967296, 4294967296\] of F32 overflows 64-bit"),
    ({"a": t(shape=[1 << 31, 1 << 30])}, 8, r"overflows 64-bit sizes"),  # fits u64 elements, not u64 bits
    ({"a": t(offsets=(0, 8, 8))}, 8, r"data_offsets \[0, 8, 8\] is not \[begin, end\] with 0 <= begin <= end"),
    ({"a": t(offsets=(8, 0))}, 8, r"data_offsets \[8, 0\] is not \[begin, end\]"),
    ({"a": t(offsets=(-8, 0))}, 8, r"data_offsets \[-8, 0\]"),
    ({"a": t(offsets=("0", "8"))}, 8, r"data_offsets \['0', '8'\]"),
    ({"a": t(offsets=(0, 12))}, 12, r"tensor 'a' \(F32, shape \[2\]\) spans 12 bytes, expected 8"),
    ({"a": {"dtype": "F32", "shape": [2]}}, 8, r"tensor 'a': the entry has no data_offsets"),
    ({"a": [1]}, 8, r"tensor 'a': the entry is a list, not an object"),
    ({"a": t(), "b": t(offsets=(12, 20))}, 20, r"tensor 'b' starts at byte 12, leaving bytes 8\.\.12 unused"),
    ({"a": t(shape=(3,), offsets=(0, 12)), "b": t(offsets=(8, 16))}, 16,
     r"tensor 'b' starts at byte 8 but the previous tensor ends at 12; tensors overlap"),
    ({"a": t(offsets=(4, 12))}, 12, r"tensor 'a' starts at byte 4, leaving bytes 0\.\.4 unused"),
    ({"a": t()}, 9, r"1 bytes follow the last tensor, which safetensors refuses"),
    ({"a": t(), "b": t(offsets=(8, 16))}, 12, r"tensor 'b' ends at byte 16 of the data section, but the file has "
                                              r"only 12; the shard is truncated"),
    ({"__metadata__": {"format": 1}, "a": t()}, 8, r"__metadata__ \{'format': 1\} is not a mapping of unique keys "
                                                   "to strings"),
    ({"__metadata__": ["pt"], "a": t()}, 8, r"__metadata__ \['pt'\] is not a mapping"),
    ('{"a": ' + json.dumps(t()) + ', "a": ' + json.dumps(t()) + "}", 8, r"the header lists 'a' twice"),
    ('{"a": {"dtype": "F32", "dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', 8,
     r"tensor 'a': key 'dtype' is given twice"),
    ('{"__metadata__": {"k": "v", "k": "w"}}', 0, r"__metadata__ \{'k': 'w'\} is not a mapping of unique keys"),
    ('{"a": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 8]}}', 8, r"the safetensors header is not valid "
                                                                          r"JSON \(NaN is not JSON"),
    ("[]", 0, r"the safetensors header is a JSON list, not an object"),
    ('{"a": {"dtype": "F32", "shape": [' + "9" * 5000 + "]}}", 0, r"the safetensors header is not valid JSON"),
    (b'{"\xff": 1}', 0, r"the safetensors header is not valid JSON \('utf-8' codec can't decode"),
    ("{" * 200_000, 0, r"is not valid JSON \(unbalanced brackets, or nested deeper than 16 levels\)"),
    ('{"a":' + "[" * 200_000 + "]" * 200_000 + "}", 0, r"nested deeper than 16 levels"),
    ('{"a": {"dtype": "F32", "shape": ' + "[" * 17 + "]" * 17 + "}}", 0, r"nested deeper than 16 levels"),
])
def test_malformed_header(tmp_path, header, data, message):
    path = write_shard(tmp_path / "bad.safetensors", header, data)
    started = time.perf_counter()
    with pytest.raises(CorruptCheckpointError, match=r"^bad\.safetensors: .*" + message):
        read_header(path)
    assert time.perf_counter() - started < 1.0


def test_malformed_header_through_the_pipeline(tmp_path):
    """The CLI path: a typed error (exit 2), nothing written."""
    src = make_checkpoint(tmp_path / "src", "llama", **DIMS)
    write_shard(src / "model.safetensors", {"a": t(dtype=["F32"])}, 8)
    out = tmp_path / "out"
    with pytest.raises(CorruptCheckpointError, match=r"model\.safetensors: tensor 'a' has unknown dtype \['F32'\]"):
        model_free_ptq(src, out, "FP8_BLOCK")
    assert no_output_left(out)


def test_strings_with_brackets_and_escapes_do_not_count_as_depth(tmp_path):
    name = 'x["{\\\\"}]' * 20 + "[" * 40
    header = {name: t(), "__metadata__": {"a]]]": '"[[[\\'}}
    path = write_shard(tmp_path / "ok.safetensors", header, 8)
    entries, data_start, metadata = read_header(path)
    assert list(entries) == [name] and metadata == {"a]]]": '"[[[\\'}
    assert data_start == path.stat().st_size - 8


def test_valid_edge_cases_are_accepted(tmp_path):
    header = {"__metadata__": None, "z": t(shape=(0, 5), offsets=(8, 8)), "y": t(shape=(), offsets=(4, 8)),
              "x": t(shape=(1,), offsets=(0, 4)), "w": t(dtype="U8", shape=(0,), offsets=(8, 8)),
              "": t(offsets=(8, 16))}
    entries, _, metadata = read_header(write_shard(tmp_path / "ok.safetensors", header, 16))
    assert metadata == {} and set(entries) == {"z", "y", "x", "w", ""}


# --------------------------------------------------------------------------- fuzzing against safetensors itself

_DTYPES = ["F32", "BF16", "U8", "I64", "BOOL", "F8_E4M3", "F4", "C64", "X"]
_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-3, 2 ** 65), st.floats(allow_nan=False),
                       st.text(max_size=6), st.sampled_from(_DTYPES))
_json_any = st.recursive(_json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=4)), max_leaves=12)


@st.composite
def headers(draw) -> tuple[bytes, int]:
    """A valid header, then zero or more structural mutations; returns (header bytes, data length)."""
    entries, offset = {}, 0
    for i in range(draw(st.integers(0, 4))):
        dtype = draw(st.sampled_from(["F32", "BF16", "U8", "I64"]))
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        size = DTYPE_SIZES[dtype] * math.prod(shape)
        entries[f"t{i}"] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    if draw(st.booleans()):
        entries["__metadata__"] = {"format": "pt"}
    names = list(entries)
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["field", "entry", "drop", "offset", "metadata"]))
        if kind == "entry":
            entries[draw(st.sampled_from(names + ["new"]))] = draw(_json_any)
        elif kind == "metadata":
            entries["__metadata__"] = draw(_json_any)
        elif names and isinstance(entries[name := draw(st.sampled_from(names))], dict):
            entry = entries[name]
            if kind == "field":
                entry[draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))] = draw(_json_any)
            elif kind == "drop":
                entry.pop(draw(st.sampled_from(["dtype", "shape", "data_offsets"])), None)
            elif isinstance(offsets := entry.get("data_offsets"), list) and len(offsets) == 2:
                which = draw(st.integers(0, 1))
                if type(offsets[which]) is int:
                    offsets[which] += draw(st.integers(-4, 4))
    raw = json.dumps(entries).encode()
    if draw(st.booleans()):  # byte-level damage too
        pos = draw(st.integers(0, len(raw)))
        raw = raw[:pos] + draw(st.binary(max_size=3)) + raw[pos + draw(st.integers(0, 3)):]
    return raw, offset + draw(st.sampled_from([0, 0, 0, 1, -1]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(case=headers())
def test_fuzzed_headers_give_a_parse_or_corrupt_checkpoint_error(tmp_path, case):
    """Differential: whatever we accept, safetensors' own reader accepts with the same tensors."""
    raw, data_len = case
    path = write_shard(tmp_path / "f.safetensors", raw, max(data_len, 0))
    started = time.perf_counter()
    try:
        entries, _, metadata = read_header(path)
    except CorruptCheckpointError as err:
        assert str(err).startswith("f.safetensors: ")
        accepted = False
    else:
        accepted = True
    assert time.perf_counter() - started < 0.5
    try:
        reference = {name: (info["dtype"], info["shape"]) for name, info in deserialize(path.read_bytes())}
    except Exception:  # safetensors refuses it: so must we
        assert not accepted
    else:
        if accepted:
            assert {name: (e["dtype"], e["shape"]) for name, e in entries.items()} == reference
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.one_of(st.binary(max_size=64), _json_any.map(lambda v: json.dumps(v).encode())))
def test_arbitrary_bytes_as_header(tmp_path, raw):
    path = write_shard(tmp_path / "f.safetensors", raw)
    try:
        entries, _, _ = read_header(path)
    except CorruptCheckpointError as err:
        assert str(err).startswith("f.safetensors: ")
    else:
        assert all(entry["dtype"] in DTYPE_SIZES for entry in entries.values())
