"""hubjob.prepare: every check that can fail before the first weight byte, in order, and nothing made.

Against the loopback Hub (``hub`` fixture); the whole streamed job: tests/test_hub.py, tests/test_stream.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from factory import make_checkpoint

from ptq_core.errors import DiskSpaceError, HubPermissionError, RepoNotFoundError, TargetRepoExistsError
from ptq_core.hubjob.prepare import prepare_hub_job
from ptq_core.job import make_job

SOURCE, TARGET = "bob/tiny", "alice/tiny-FP8-BLOCK"
ALICE = "hf_test_alice"


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("llama") / "tiny", "llama", shards=2)


@pytest.fixture
def seeded(hub, llama):
    hub.seed_repo(SOURCE, {p.name: p for p in llama.iterdir() if p.is_file()})
    return hub


def _made_nothing(hub) -> None:
    assert not hub.repo_exists(TARGET)
    assert [repo for repo, _branch in hub.stats.commits if repo != SOURCE] == []


def test_a_job_that_passes_holds_its_plan_and_has_created_nothing(seeded, tmp_path):
    prepared = prepare_hub_job(make_job(SOURCE, "FP8_BLOCK"), token=ALICE, work_dir=tmp_path)
    assert prepared.target == TARGET and prepared.http.user == "alice" and prepared.finished is None
    assert prepared.planned.revision == seeded.commits(SOURCE)[-1]["oid"] and prepared.planned.footprint.fits
    assert prepared.branch.startswith("ptq-staging-") and prepared.fingerprint in prepared.branch
    _made_nothing(seeded)


def test_a_target_holding_files_needs_overwrite(seeded, tmp_path):
    seeded.seed_repo(TARGET, {"config.json": b"{}"})
    with pytest.raises(TargetRepoExistsError, match=TARGET):
        prepare_hub_job(make_job(SOURCE, "FP8_BLOCK"), token=ALICE, work_dir=tmp_path)
    assert seeded.list_files(TARGET) == ["config.json"]


def test_a_namespace_the_user_cannot_write_is_refused(seeded, tmp_path):
    with pytest.raises(HubPermissionError, match="not a member of 'bob'"):
        prepare_hub_job(make_job(SOURCE, "FP8_BLOCK", target="bob/out"), token=ALICE, work_dir=tmp_path)
    assert not seeded.repo_exists("bob/out")


def test_a_missing_source_is_named(seeded, tmp_path):
    with pytest.raises(RepoNotFoundError, match="bob/missing"):
        prepare_hub_job(make_job("bob/missing", "FP8_BLOCK"), token=ALICE, work_dir=tmp_path)
    assert not seeded.repo_exists("alice/missing-FP8-BLOCK")


def test_an_output_shard_larger_than_the_disk_budget_is_refused_up_front(seeded, tmp_path):
    with pytest.raises(DiskSpaceError, match="disk"):
        prepare_hub_job(make_job(SOURCE, "FP8_BLOCK", disk_budget=1000), token=ALICE, work_dir=tmp_path)
    _made_nothing(seeded)
