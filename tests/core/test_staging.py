"""The commit on ``main``: the target is ours or the job is refused, to the last commit.

Races with other writers are played by the loopback Hub server (``on_request``: an
action just before the Nth matching request; ``fail_requests(after=True)``: a commit
applied and its answer lost). Each test names what it guards against.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from factory import make_checkpoint

from ptq_core.hubjob import stage as hub_module
from ptq_core.errors import TargetChangedError, TargetRepoExistsError
from ptq_core.hubjob import quantize_to_hub
from ptq_core.staging import BRANCH_PREFIX, FINGERPRINT_TRAILER

ALICE = "hf_test_alice"
SOURCE = "bob/tiny"
TARGET = "alice/tiny-FP8-BLOCK"
THRESHOLD = 64 * 1024


pytestmark = pytest.mark.usefixtures("fast_retries")


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("llama") / "tiny", "llama", shards=4, num_hidden_layers=4)


@pytest.fixture
def seeded(hub, llama) -> Path:
    hub.configure(lfs_threshold=THRESHOLD)
    hub.seed_repo(SOURCE, {p.name: p for p in llama.iterdir() if p.is_file()})
    return llama


def _job_commits(hub, target: str = TARGET) -> list[dict]:
    """Commits of main that carry a ptq-hub job fingerprint."""
    return [c for c in hub.commits(target) if FINGERPRINT_TRAILER in c["description"]]


def _staging_branches(hub, target: str = TARGET) -> list[str]:
    return [b for b in hub.branches(target) if b.startswith(BRANCH_PREFIX)]


def _model_files(hub, target: str = TARGET) -> set[str]:
    return set(hub.list_files(target))


@pytest.fixture
def model(seeded) -> set[str]:
    """The files of a published model of ``seeded``: its own names (shards keep them) plus the card."""
    return {p.name for p in seeded.iterdir() if p.is_file()} | {"README.md", ".gitattributes"}


# --- a change made meanwhile fails the commit -----------------------------------------
def test_a_readme_committed_mid_job_is_not_overwritten_and_is_named(hub, seeded, model, tmp_path):
    # Old code: the final commit had no parent_commit, overwrote this README and exited 0.
    hub.on_request(f"/{TARGET}/commit/main", lambda *_: hub.commit_files(TARGET, {"README.md": "# theirs\n"}))
    with pytest.raises(TargetChangedError, match=r"Files were committed to alice/tiny-FP8-BLOCK while this job ran: "
                                                 r"README.md \(main is now at commit \w{10}\)\. Nothing was "
                                                 r"overwritten\. Pass overwrite=True"):
        quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=tmp_path / "w")
    assert hub.read_file(TARGET, "README.md") == b"# theirs\n"
    assert _model_files(hub) == {".gitattributes", "README.md"} and not _job_commits(hub)
    assert len(_staging_branches(hub)) == 1  # kept: a rerun with overwrite only commits

    with pytest.raises(TargetRepoExistsError, match="README.md"):
        quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=tmp_path / "w")
    puts = hub.stats.lfs_puts
    result = quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=tmp_path / "w", overwrite=True)
    assert hub.stats.lfs_puts == puts and _model_files(hub) == model
    assert b"# theirs" not in hub.read_file(TARGET, "README.md")
    assert [c["oid"] for c in _job_commits(hub)] == [result.commit_sha] and not _staging_branches(hub)


def test_files_added_mid_job_are_removed_by_overwrite(hub, seeded, model, tmp_path, caplog):
    # Old code: with overwrite, files added after the start stayed mixed into the published model.
    hub.seed_repo(TARGET, {"README.md": "# old\n", "old.bin": b"\0" * 10})
    hub.on_request(f"/{TARGET}/commit/main",
                   lambda *_: hub.commit_files(TARGET, {"notes.txt": "hi", "config.json": "{}"}))
    result = quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=tmp_path / "w", overwrite=True)
    assert _model_files(hub) == model - {".gitattributes"}  # old.bin and notes.txt gone (seeded without one)
    assert hub.read_file(TARGET, "config.json") != b"{}"
    assert hub.commits(TARGET)[-1]["oid"] == result.commit_sha and len(_job_commits(hub)) == 1
    assert "moved to" in caplog.text and "notes.txt" in caplog.text


# --- a lost answer is resolved by reading main ---------------------------------------------
def test_a_lost_answer_to_the_main_commit_makes_no_second_commit(hub, seeded, model, tmp_path):
    # Old code: HubHttp.call retried the 503 blindly and made a second, identical commit.
    hub.fail_requests(f"/{TARGET}/commit/main", times=1, status=503, after=True)
    result = quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=tmp_path / "w")
    assert [c["oid"] for c in _job_commits(hub)] == [result.commit_sha]
    assert hub.stats.commits[(TARGET, "main")] == 1 and _model_files(hub) == model


def test_a_main_commit_that_never_lands_is_retried_after_reading_main(hub, seeded, tmp_path):
    hub.fail_requests(f"/{TARGET}/commit/main", times=2, status=503)  # not applied: retrying is safe
    log_start = len(hub.requests_log)
    result = quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=tmp_path / "w")
    assert [c["oid"] for c in _job_commits(hub)] == [result.commit_sha]
    steps = [("commit" if "/commit/main" in p else "read") for m, p, _ in hub.requests_log[log_start:]
             if "/commit/main" in p or "/commits/main" in p]
    assert steps == ["commit", "read", "commit", "read", "commit"]  # main read before each retry


# --- fragile points -------------------------------------------------------------------------
def test_a_staging_branch_left_behind_is_deleted_by_the_rerun(hub, seeded, tmp_path, caplog):
    # Old code: the rerun got TargetRepoExistsError and the branch stayed forever.
    hub.fail_requests(f"/{TARGET}/branch/{BRANCH_PREFIX}", times=4, status=500, method="DELETE")
    first = quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=tmp_path / "w")
    assert "could not be deleted" in caplog.text and len(_staging_branches(hub)) == 1
    commits = dict(hub.stats.commits)
    again = quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=tmp_path / "w")
    assert (again.commit_sha, again.repo_url) == (first.commit_sha, f"{hub.endpoint}/{TARGET}")
    assert not _staging_branches(hub) and hub.stats.commits == commits


def _publish_as_another_run(hub, *, delete_branch: bool):
    """The other run of the same job wins: its commit (same fingerprint) lands on main first."""

    def act(_method: str, _path: str) -> None:
        (branch,) = _staging_branches(hub)
        fingerprint = branch.removeprefix(BRANCH_PREFIX)
        hub.commit_files(TARGET, {"README.md": "# the model\n"}, message="Add bob/tiny quantized",
                         description=f"by the other run\n\n{FINGERPRINT_TRAILER} {fingerprint}")
        if delete_branch:
            hub.delete_branch(TARGET, branch)

    return act


@pytest.mark.parametrize("when", ["before-the-final-commit", "mid-staging"])
def test_the_loser_of_two_runs_reports_the_winners_commit(hub, seeded, tmp_path, caplog, monkeypatch, when):
    # Old code: the loser said "main is untouched ... rerun to resume" (or even deleted the repo).
    if when == "mid-staging":
        monkeypatch.setattr(hub_module, "STAGE_COMMIT_INTERVAL", 0)
        hub.on_request(f"/{TARGET}/commit/{BRANCH_PREFIX}", _publish_as_another_run(hub, delete_branch=True))
    else:
        hub.on_request(f"/{TARGET}/commit/main", _publish_as_another_run(hub, delete_branch=False))
    result = quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=tmp_path / "w")
    (winner,) = _job_commits(hub)
    assert result.commit_sha == winner["oid"] and result.repo_url == f"{hub.endpoint}/{TARGET}"
    assert hub.stats.commits.get((TARGET, "main"), 0) == 0  # this run made no commit on main
    assert "Another run of this same job published it" in caplog.text and winner["oid"][:10] in caplog.text
    assert "main is untouched" not in caplog.text and hub.repo_exists(TARGET)
