"""remote: headers and tensor bytes of a Hub checkpoint over Range reads, tested without a server.

``fetch_range`` is the one function that speaks HTTP; here it is replaced by reads of the
same files on disk, so the header step, the coalescing and the reader are checked alone
(the test Hub server drives the HTTP side in tests/test_stream.py and tests/test_http.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from ptq_core import remote
from ptq_core.checkpoint import open_checkpoint
from ptq_core.errors import MissingShardError, NoSafetensorsError, SourceChangedError
from ptq_core.source import SourceState


class LocalRanges:
    """``fetch_range`` over a folder: the bytes a Range request would return, and each request made."""

    def __init__(self, folder: Path, fail_on: str | None = None) -> None:
        self.folder = folder
        self.fail_on = fail_on
        self.requests: list[tuple[str, int, int]] = []

    def __call__(self, http, source, path, start, nbytes, sink) -> None:
        self.requests.append((path, start, nbytes))
        if path == self.fail_on:
            raise SourceChangedError(f"{path} is gone")
        with open(self.folder / path, "rb") as f:
            f.seek(start)
            sink(f.read(nbytes))


def _checkpoint(folder: Path, *, indexed: bool = True) -> Path:
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    first = {f"layers.{i}.w": torch.randn(8, 16, generator=g).to(torch.bfloat16) for i in range(3)}
    second = {"norm.weight": torch.randn(16, generator=g), "lm_head.weight": torch.randn(4, 16, generator=g)}
    save_file(first, folder / "model-00001-of-00002.safetensors", metadata={"format": "pt"})
    save_file(second, folder / "model-00002-of-00002.safetensors")
    if indexed:
        weight_map = {**{n: "model-00001-of-00002.safetensors" for n in first},
                      **{n: "model-00002-of-00002.safetensors" for n in second}}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text("{}")
    return folder


def _state(folder: Path, weight_map: dict | None = None) -> SourceState:
    files = {p.name: p.stat().st_size for p in folder.iterdir()}
    index = folder / "model.safetensors.index.json"
    if weight_map is None and index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
    return SourceState("org/m", None, "0" * 40, files, {}, weight_map)


def test_headers_over_ranges_equal_the_folders(tmp_path, monkeypatch):
    folder = _checkpoint(tmp_path / "m")
    ranges = LocalRanges(folder)
    monkeypatch.setattr(remote, "fetch_range", ranges)
    seen = []
    checkpoint = remote.open_remote_checkpoint(None, _state(folder), progress=seen.append)
    local = open_checkpoint(folder)
    assert dict(checkpoint.tensors) == dict(local.tensors)
    assert (checkpoint.shards, checkpoint.metadata, checkpoint.extra_files) == (
        local.shards, local.metadata, local.extra_files)
    assert len(ranges.requests) == 2  # one probe per shard holds the whole header
    assert sorted(seen) == sorted(_header_end(folder / s) for s in local.shards)  # one call per header


def _header_end(path: Path) -> int:
    """Where a shard's header ends: its 8-byte length and the JSON header."""
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def test_a_header_longer_than_the_probe_is_read_in_a_second_request(tmp_path, monkeypatch):
    folder = _checkpoint(tmp_path / "m")
    ranges = LocalRanges(folder)
    monkeypatch.setattr(remote, "fetch_range", ranges)
    monkeypatch.setattr(remote, "_HEADER_PROBE", 16)
    checkpoint = remote.open_remote_checkpoint(None, _state(folder))
    assert dict(checkpoint.tensors) == dict(open_checkpoint(folder).tensors)
    shard = "model-00001-of-00002.safetensors"
    end = _header_end(folder / shard)
    assert end > 16
    assert sorted((start, n) for path, start, n in ranges.requests if path == shard) == [(0, 16), (16, end - 16)]


def test_an_index_naming_a_missing_shard_is_refused_before_any_read(tmp_path, monkeypatch):
    folder = _checkpoint(tmp_path / "m")
    ranges = LocalRanges(folder)
    monkeypatch.setattr(remote, "fetch_range", ranges)
    weight_map = {"layers.0.w": "model-00003-of-00003.safetensors"}
    with pytest.raises(MissingShardError, match="model-00003-of-00003.safetensors"):
        remote.open_remote_checkpoint(None, _state(folder, weight_map))
    assert ranges.requests == []


def test_an_index_mapping_a_tensor_to_the_wrong_shard_is_refused(tmp_path, monkeypatch):
    folder = _checkpoint(tmp_path / "m")
    monkeypatch.setattr(remote, "fetch_range", LocalRanges(folder))
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    weight_map["norm.weight"] = "model-00001-of-00002.safetensors"
    with pytest.raises(MissingShardError, match="norm.weight"):
        remote.open_remote_checkpoint(None, _state(folder, weight_map))


def test_no_shard_is_refused(tmp_path):
    state = SourceState("org/m", None, "0" * 40, {"config.json": 2}, {})
    with pytest.raises(NoSafetensorsError, match="org/m"):
        remote.open_remote_checkpoint(None, state)


@pytest.mark.parametrize(
    ("reads", "gap", "span_max", "expected"),
    [
        ([[("a", 0, 10)], [("a", 10, 10)]], 1, 100, [("a", 0, 20, 2)]),  # adjacent: one span
        ([[("a", 0, 10), ("a", 15, 5)]], 10, 100, [("a", 0, 20, 2)]),  # a small gap is read through
        ([[("a", 0, 10), ("a", 30, 5)]], 10, 100, [("a", 0, 10, 1), ("a", 30, 35, 1)]),  # a large gap splits
        ([[("a", 0, 10), ("a", 10, 10)]], 1, 15, [("a", 0, 10, 1), ("a", 10, 20, 1)]),  # span_max splits
        ([[("a", 0, 10), ("b", 10, 10)]], 1, 100, [("a", 0, 10, 1), ("b", 10, 20, 1)]),  # another shard
        ([[("a", 20, 10)], [("a", 0, 10)]], 100, 100, [("a", 20, 30, 1), ("a", 0, 10, 1)]),  # never backwards
    ],
    ids=["adjacent", "small-gap", "large-gap", "span-max", "other-shard", "consumption-order"],
)
def test_coalesce(reads, gap, span_max, expected):
    plan = remote._coalesce(reads, gap, span_max)
    assert [(s.shard, s.start, s.end, s.readers) for s in plan.spans] == expected
    for unit in reads:
        for shard, offset, nbytes in unit:
            index, size = plan.by_read[(shard, offset)]
            span = plan.spans[index]
            assert size == nbytes and span.shard == shard and span.start <= offset and offset + nbytes <= span.end


def _units(checkpoint) -> list[list[tuple[str, int, int]]]:
    return [[(t.shard, t.offset, t.nbytes)] for t in checkpoint.tensors.values()]


@pytest.mark.parametrize("piece", [7, 1 << 20], ids=["many-pieces", "one-piece"])
def test_reader_returns_the_files_bytes(tmp_path, monkeypatch, piece):
    folder = _checkpoint(tmp_path / "m")
    ranges = LocalRanges(folder)
    monkeypatch.setattr(remote, "fetch_range", ranges)
    checkpoint = open_checkpoint(folder)
    with remote.RemoteReader(None, _state(folder), checkpoint, _units(checkpoint), window=64, threads=3,
                             piece=piece) as reader:
        for info in checkpoint.tensors.values():
            out = torch.empty(info.nbytes, dtype=torch.uint8)
            reader.read_into(info, out)
            raw = (folder / info.shard).read_bytes()[info.offset : info.offset + info.nbytes]
            assert out.numpy().tobytes() == raw, info.name
    assert reader.span_count == 2  # each shard's tensors are adjacent: one span per shard
    assert sum(n for _, _, n in ranges.requests) == reader.total_bytes == checkpoint.total_bytes


def test_a_failed_fetch_is_raised_in_the_worker_that_needs_it(tmp_path, monkeypatch):
    folder = _checkpoint(tmp_path / "m")
    monkeypatch.setattr(remote, "fetch_range", LocalRanges(folder, fail_on="model-00002-of-00002.safetensors"))
    checkpoint = open_checkpoint(folder)
    info = checkpoint.tensors["norm.weight"]
    with remote.RemoteReader(None, _state(folder), checkpoint, _units(checkpoint), window=1 << 20) as reader:
        with pytest.raises(SourceChangedError, match="is gone"):
            reader.read_into(info, torch.empty(info.nbytes, dtype=torch.uint8))


def _response(status: int, content_range: str | None, encoding: str | None = None) -> SimpleNamespace:
    headers = {}
    if content_range is not None:
        headers["content-range"] = content_range
    if encoding is not None:
        headers["content-encoding"] = encoding
    return SimpleNamespace(status_code=status, headers=headers)


@pytest.mark.parametrize(
    ("response", "match"),
    [
        (_response(200, None), "HTTP 200"),
        (_response(206, "bytes 0-9/100"), "asked for bytes 10-19"),
        (_response(206, "bytes 10-19/99"), "99 bytes at the pinned commit"),
        (_response(206, "bytes 10-19/100", encoding="gzip"), "'gzip'-encoded"),
    ],
    ids=["not-partial", "other-range", "other-size", "encoded"],
)
def test_check_range_refuses_an_answer_for_other_bytes(response, match):
    with pytest.raises(SourceChangedError, match=match):
        remote._check_range(response, "model.safetensors", 10, 19, 100)


def test_check_range_accepts_the_bytes_asked_for():
    remote._check_range(_response(206, "bytes 10-19/100"), "model.safetensors", 10, 19, 100)
    remote._check_range(_response(206, "bytes 10-19/*"), "model.safetensors", 10, 19, 100)
