"""hubjob.run: ``quantize_to_hub`` is ``prepare_hub_job`` then ``run_hub_job`` (stage, then finalize)."""

from __future__ import annotations

from pathlib import Path

import pytest
from factory import make_checkpoint

from ptq_core.errors import InvalidOptionError
from ptq_core.hubjob.prepare import prepare_hub_job
from ptq_core.hubjob.run import quantize_to_hub, run_hub_job
from ptq_core.job import make_job

SOURCE, TARGET = "bob/tiny", "alice/tiny-FP8-BLOCK"
ALICE = "hf_test_alice"


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("llama") / "tiny", "llama", shards=2)


def test_the_two_phases_publish_what_the_one_call_does(hub, llama, tmp_path):
    hub.seed_repo(SOURCE, {p.name: p for p in llama.iterdir() if p.is_file()})
    events = []
    prepared = prepare_hub_job(make_job(SOURCE, "FP8_BLOCK"), token=ALICE, work_dir=tmp_path)
    result = run_hub_job(prepared, progress=lambda *e: events.append(e[0]))
    assert result.repo_id == TARGET and result.commit_sha == hub.commits(TARGET)[-1]["oid"]
    assert result.size_after == prepared.planned.plan.size_after and result.ratio > 1.5
    assert {"validate", "quantize", "upload", "commit"} <= set(events)
    assert set(result.timings) >= {"plan", "total"}
    commits = hub.commits(TARGET)
    again = quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=tmp_path)  # finished: reported, not redone
    assert again.commit_sha == result.commit_sha and hub.commits(TARGET) == commits


def test_a_job_takes_no_options_next_to_it(hub):
    with pytest.raises(InvalidOptionError, match="were given next to a Job"):
        quantize_to_hub(make_job(SOURCE, "FP8_BLOCK"), private=True, token=ALICE)
