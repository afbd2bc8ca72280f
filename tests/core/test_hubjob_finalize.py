"""hubjob.finalize: every part checked, then exactly one commit on ``main`` (the loopback Hub)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from factory import make_checkpoint

from ptq_core.errors import InvalidOptionError, MissingPartError
from ptq_core.hubjob.finalize import finalize_hub_job
from ptq_core.hubjob.run import quantize_to_hub

SOURCE, TARGET = "bob/tiny", "alice/tiny-FP8-BLOCK"
ALICE = "hf_test_alice"


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("llama") / "tiny", "llama", shards=2)


def test_two_parts_then_one_commit_on_main_and_the_branch_gone(hub, llama, tmp_path):
    hub.seed_repo(SOURCE, {p.name: p for p in llama.iterdir() if p.is_file()})
    first = quantize_to_hub(SOURCE, "FP8_BLOCK", part="1/2", token=ALICE, work_dir=tmp_path)
    with pytest.raises(MissingPartError, match="2"):
        finalize_hub_job(SOURCE, "FP8_BLOCK", parts=2, token=ALICE, work_dir=tmp_path)
    assert hub.list_files(TARGET) == [".gitattributes"]
    quantize_to_hub(SOURCE, "FP8_BLOCK", part="2/2", token=ALICE, work_dir=tmp_path)
    result = finalize_hub_job(SOURCE, "FP8_BLOCK", parts=2, token=ALICE, work_dir=tmp_path)
    main = hub.commits(TARGET)
    assert result.commit_sha == main[-1]["oid"] and result.part is None
    files = set(hub.list_files(TARGET))
    index = json.loads(hub.read_file(TARGET, "model.safetensors.index.json"))
    assert {"README.md", "config.json", "model.safetensors.index.json"} <= files
    assert set(index["weight_map"].values()) <= files
    assert "quantization_config" in json.loads(hub.read_file(TARGET, "config.json"))
    assert first.branch not in hub.branches(TARGET)
    again = finalize_hub_job(SOURCE, "FP8_BLOCK", parts=2, token=ALICE, work_dir=tmp_path)
    assert again.commit_sha == result.commit_sha and hub.commits(TARGET) == main  # a rerun makes no commit


def test_finalize_combines_all_parts_and_takes_a_count(hub):
    with pytest.raises(InvalidOptionError, match="finalize combines all parts"):
        finalize_hub_job(SOURCE, "FP8_BLOCK", parts=2, part="1/2", token=ALICE)
    with pytest.raises(InvalidOptionError, match="parts=0 must be the number of parts"):
        finalize_hub_job(SOURCE, "FP8_BLOCK", parts=0, token=ALICE)
