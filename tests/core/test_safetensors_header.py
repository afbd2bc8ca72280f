"""sources.safetensors_header: a header read from a file or over Range reads, validated like safetensors.

tests/test_checkpoint_safety.py holds the hostile and fuzzed headers; here, the API a
Range read uses (``header_length`` then ``parse_header``) against a real file's bytes.
"""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from ptq_core.errors import CorruptCheckpointError
from ptq_core.sources.safetensors_header import DTYPE_SIZES, header_length, parse_header, read_header, tensor_nbytes


@pytest.fixture
def shard(tmp_path):
    path = tmp_path / "s.safetensors"
    save_file({"w": torch.zeros(3, 4, dtype=torch.bfloat16), "b": torch.zeros(4)}, str(path), {"format": "pt"})
    return path


def test_range_reads_give_what_reading_the_file_gives(shard):
    raw = shard.read_bytes()
    n = header_length(raw[:8], len(raw), shard.name)
    assert parse_header(raw[8:8 + n], len(raw), shard.name) == read_header(shard)
    entries, data_start, metadata = read_header(shard)
    assert data_start == 8 + n and metadata == {"format": "pt"}
    assert entries["w"]["dtype"] == "BF16" and entries["w"]["shape"] == [3, 4]


def test_a_length_that_cannot_fit_the_file_is_refused():
    with pytest.raises(CorruptCheckpointError, match="too short to be a safetensors file"):
        header_length(b"\x01", 1, "s")
    with pytest.raises(CorruptCheckpointError, match="does not fit a 100-byte file"):
        header_length(struct.pack("<Q", 93), 100, "s")
    with pytest.raises(CorruptCheckpointError, match="too large"):
        header_length(struct.pack("<Q", 1 << 40), 1 << 41, "s")
    assert header_length(struct.pack("<Q", 92), 100, "s") == 92


def test_offsets_that_leave_the_data_are_refused():
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}).encode()
    with pytest.raises(CorruptCheckpointError, match="w"):
        parse_header(header, 8 + len(header) + 8, "s")  # 8 bytes of data, 16 claimed


def test_nbytes_follows_the_dtype_table():
    assert tensor_nbytes("BF16", (3, 4)) == 24 and tensor_nbytes("F8_E4M3", (5,)) == 5
    assert tensor_nbytes("F32", ()) == 4 and tensor_nbytes("I32", (0, 7)) == 0
    assert DTYPE_SIZES["F64"] == 8 and DTYPE_SIZES["U8"] == 1
