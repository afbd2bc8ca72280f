"""hubjob.stage: one part's output shards onto the staging branch, ``main`` untouched (the loopback Hub).

The streamed read, disk gate and uploads underneath: tests/core/test_stream.py, tests/test_stream.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from factory import make_checkpoint

from ptq_core.hubjob.prepare import prepare_hub_job
from ptq_core.hubjob.results import StageClock
from ptq_core.hubjob.stage import stage_part
from ptq_core.job import make_job

SOURCE, TARGET = "bob/tiny", "alice/tiny-FP8-BLOCK"
ALICE = "hf_test_alice"


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("llama") / "tiny", "llama", shards=2)


def test_a_part_stages_its_shards_and_manifest_and_a_rerun_does_nothing(hub, llama, tmp_path):
    hub.seed_repo(SOURCE, {p.name: p for p in llama.iterdir() if p.is_file()})
    prepared = prepare_hub_job(make_job(SOURCE, "FP8_BLOCK", part="1/2"), token=ALICE, work_dir=tmp_path)
    events = []
    staged = stage_part(prepared, 1, 2, StageClock(lambda *e: events.append(e)))
    assert staged.created and hub.branches(TARGET)[prepared.branch] == staged.head
    files = hub.list_files(TARGET, revision=prepared.branch)
    manifest = json.loads(hub.read_file(TARGET, ".ptq/part-1-of-2.json", revision=prepared.branch))
    mine = prepared.planned.parts[0]
    assert set(mine) <= set(files) and not set(prepared.planned.parts[1]) & set(files)
    assert manifest["fingerprint"] == prepared.fingerprint and manifest["complete"]
    assert manifest["planned"] == list(mine) and sorted(manifest["staged"]) == sorted(mine)
    assert hub.list_files(TARGET) == [".gitattributes"]  # main: only what creating the repo made
    assert ("stage", len(mine), len(mine)) in events
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("ptq-job-")]  # the work folder went

    again = prepare_hub_job(make_job(SOURCE, "FP8_BLOCK", part="1/2"), token=ALICE, work_dir=tmp_path)
    before = dict(hub.stats.commits)
    rerun = stage_part(again, 1, 2, StageClock(None))
    assert rerun.stager is None and rerun.head == staged.head and dict(hub.stats.commits) == before
