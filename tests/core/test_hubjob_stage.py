"""hubjob.stage: one part's output shards onto the staging branch, ``main`` untouched (the loopback Hub).

The streamed read, disk gate and uploads underneath: tests/core/test_stream.py, tests/test_stream.py.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from factory import make_checkpoint
from hub_server import LFS_CDN_PATH

from ptq_core.hubjob import stage as stage_module
from ptq_core.hubjob.prepare import prepare_hub_job
from ptq_core.hubjob.results import StageClock
from ptq_core.hubjob.stage import SourceDownload, stage_part
from ptq_core.job import make_job
from ptq_core.stream import stream_reads

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


def _weight_ranges(hub) -> list[str]:
    """Range headers of the GETs of weight bytes (header reads, from byte 0, do not count)."""
    return [h["range"] for m, p, h in hub.requests_log
            if m == "GET" and (p.split("?")[0].endswith(".safetensors") or p.startswith(LFS_CDN_PATH))
            and not h.get("range", "bytes=0-").startswith("bytes=0-")]


def test_a_new_target_is_created_while_the_source_is_already_read(hub, llama, tmp_path, monkeypatch):
    hub.seed_repo(SOURCE, {p.name: p for p in llama.iterdir() if p.is_file()})
    prepared = prepare_hub_job(make_job(SOURCE, "FP8_BLOCK"), token=ALICE, work_dir=tmp_path)
    begin = stage_module.PartStage.begin
    seen_before_begin: list[str] = []

    def begin_once_reading(self):  # without a prefetch no Range read starts before begin: the wait runs out
        deadline = time.monotonic() + 30
        while not _weight_ranges(hub) and time.monotonic() < deadline:
            time.sleep(0.01)
        seen_before_begin.extend(_weight_ranges(hub))
        return begin(self)

    monkeypatch.setattr(stage_module.PartStage, "begin", begin_once_reading)
    staged = stage_part(prepared, 1, 1, StageClock(None))
    assert seen_before_begin and staged.created
    assert sorted(staged.stager.pending()) == sorted(prepared.planned.parts[0])
    ranges = Counter(_weight_ranges(hub))
    assert ranges and max(ranges.values()) == 1  # the prefetched reads were used, not read again


def test_a_prefetch_for_other_shards_is_dropped(hub, llama, tmp_path):
    hub.seed_repo(SOURCE, {p.name: p for p in llama.iterdir() if p.is_file()})
    prepared = prepare_hub_job(make_job(SOURCE, "FP8_BLOCK"), token=ALICE, work_dir=tmp_path)
    planned, shards = prepared.planned, list(prepared.planned.parts[0])
    download = SourceDownload(prepared, StageClock(None))
    download.prefetch(shards)
    early = download.open(stream_reads(planned.plan, planned.checkpoint, shards))
    assert early._threads and all(t.ident is not None for t in early._threads)  # already fetching
    early.close()

    download.prefetch(shards)
    fewer = stream_reads(planned.plan, planned.checkpoint, shards[1:])
    with download.open(fewer) as reader:
        assert reader is not early and reader.total_bytes < early.total_bytes
        assert download.total == reader.total_bytes
    download.discard()  # nothing left to stop
