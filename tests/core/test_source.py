"""source: a Hub source's state and which of its files a job reads, tested without a server.

``HubHttp`` is replaced by a fake whose ``hf_hub_download`` serves files from a dict, so the
shard rule and the index handling of inspection are checked alone (inspection against the
test Hub server: tests/core/test_shards.py, tests/test_stream.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptq_core import source as source_module
from ptq_core.errors import UnsafePathError
from ptq_core.source import SourceState


class FakeHttp:
    """``HubHttp.call`` runs the function as is; ``api.hf_hub_download`` writes ``files[name]``."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files
        self.downloads: list[str] = []
        self.api = self

    def call(self, what, fn, *args, role=None, repo_id=None, translate=None, passthrough=None, **kwargs):
        return fn(*args, **kwargs)

    def hf_hub_download(self, repo_id: str, filename: str, *, revision: str, local_dir: str) -> str:
        self.downloads.append(filename)
        path = Path(local_dir) / filename
        path.write_text(self.files[filename])
        return str(path)


def _index(weight_map: object) -> str:
    return json.dumps({"metadata": {}, "weight_map": weight_map})


@pytest.mark.parametrize(
    ("wanted", "index", "kept", "weight_map"),
    [
        (["config.json", "consolidated.safetensors", "model.safetensors"], None,
         ["config.json", "model.safetensors"], None),
        (["a.safetensors", "b.safetensors", "config.json"], None, ["a.safetensors", "b.safetensors", "config.json"],
         None),
        (["config.json", "consolidated.safetensors", "m-1.safetensors", "m-2.safetensors",
          "model.safetensors.index.json"], _index({"x": "m-2.safetensors", "y": "m-1.safetensors"}),
         ["config.json", "m-1.safetensors", "m-2.safetensors", "model.safetensors.index.json"],
         {"x": "m-2.safetensors", "y": "m-1.safetensors"}),
        # a broken index: the folder rule, and the checkpoint reader names what is wrong later
        (["consolidated.safetensors", "model.safetensors", "model.safetensors.index.json"], "{not json",
         ["model.safetensors", "model.safetensors.index.json"], None),
        (["model.safetensors", "model.safetensors.index.json"], _index({"x": 3}),
         ["model.safetensors", "model.safetensors.index.json"], None),
    ],
    ids=["model-beside-consolidated", "no-model-file", "index", "broken-index", "index-not-names"],
)
def test_weights_from_index_keeps_the_checkpoints_shards(wanted, index, kept, weight_map):
    http = FakeHttp({"model.safetensors.index.json": index} if index is not None else {})
    got, got_map = source_module._weights_from_index(http, "org/m", "0" * 40, wanted)
    assert (got, got_map) == (kept, weight_map)
    assert http.downloads == (["model.safetensors.index.json"] if index is not None else [])


def test_an_index_pointing_outside_the_repo_fails_before_any_download():
    http = FakeHttp({"model.safetensors.index.json": _index({"x": "../other/model.safetensors"})})
    with pytest.raises(UnsafePathError, match="contains '..'"):
        source_module._weights_from_index(http, "org/m", "0" * 40, ["model.safetensors.index.json"])


@pytest.mark.parametrize(
    ("files", "weight_map", "shards"),
    [
        ({"model.safetensors": 10, "consolidated.safetensors": 10, "config.json": 2}, None, ("model.safetensors",)),
        ({"b.safetensors": 1, "a.safetensors": 1}, None, ("a.safetensors", "b.safetensors")),
        ({"m-1.safetensors": 1, "m-2.safetensors": 1}, {"y": "m-2.safetensors", "x": "m-1.safetensors"},
         ("m-2.safetensors", "m-1.safetensors")),
    ],
    ids=["model-file", "sorted", "index-order"],
)
def test_source_state_shards_follow_the_folder_rule(files, weight_map, shards):
    state = SourceState("org/m", None, "0" * 40, files, {}, weight_map)
    assert state.shards == shards


def test_source_state_sizes():
    state = SourceState("org/m", None, "0" * 40, {"model.safetensors": 100, "config.json": 3, "tok.json": 4}, {})
    assert (state.weight_bytes, state.total_bytes) == (100, 107)
