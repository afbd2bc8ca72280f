"""``--on-jobs``: a streamed Hub job run as a Hugging Face Job, end to end on the test Hub.

The test Hub's Jobs API (``tests/hub_jobs_server.py``) runs each job's command as a real
subprocess against the same server, through the real ``huggingface_hub`` client: what the
container runs (the uploaded ptq-hub zip, the bootstrap, the pins) is what is tested.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from pathlib import Path

import pytest
from factory import make_checkpoint

import ptq_core
from ptq_core import hf_jobs
from ptq_core.errors import (
    JobFailedError,
    JobsCreditsError,
    JobsPermissionError,
    JobTimedOutError,
    UnknownFlavorError,
)
from ptq_core.job import make_job

ALICE = "hf_test_alice"
SOURCE = "bob/tiny"
TARGET = "alice/tiny-FP8-BLOCK"
THRESHOLD = 64 * 1024

pytestmark = pytest.mark.usefixtures("fast_retries")


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("llama") / "tiny", "llama", shards=4, num_hidden_layers=4)


@pytest.fixture(scope="module")
def local_fp8(llama, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    ptq_core.quantize_job(make_job(str(llama), "FP8_BLOCK"), out)
    return out


@pytest.fixture
def seeded(hub, llama):
    hub.configure(lfs_threshold=THRESHOLD)
    hub.seed_repo(SOURCE, {p.name: p for p in llama.iterdir() if p.is_file()})
    return hub


def _assert_equals_local(hub, target: str, local: Path) -> None:
    expected = {p.name for p in local.iterdir()}
    assert set(hub.list_files(target)) == expected | {".gitattributes", "README.md"}
    for name in sorted(expected):
        assert hub.read_file(target, name) == (local / name).read_bytes(), name


def test_a_job_makes_the_repo_a_local_run_makes(seeded, local_fp8):
    events: list[tuple[str, int, int]] = []
    launched: list[hf_jobs.HfJob] = []

    result = hf_jobs.run_on_hf_jobs(SOURCE, "FP8_BLOCK", flavor="cpu-basic", token=ALICE,
                                    progress=lambda *e: events.append(e), on_launch=launched.append)

    _assert_equals_local(seeded, TARGET, local_fp8)
    (job,) = launched
    assert result.job == job and job.url == f"{seeded.endpoint}/jobs/alice/{job.id}"
    assert result.repo_id == TARGET and result.commit_sha == seeded.commits(TARGET)[-1]["oid"]
    assert result.to_markdown().startswith(f"| | |\n|---|---|\n| repo | [{TARGET}]({seeded.endpoint}/{TARGET}) |")
    # The bars come back: every stage of a streamed job, each to its end.
    stages = {stage for stage, _, _ in events}
    assert {"download", "quantize", "upload", "commit"} <= stages
    for stage in stages:
        assert [e for e in events if e[0] == stage][-1][1] == [e for e in events if e[0] == stage][-1][2]
    # The token is a secret: never in the command, the environment, the labels or the log.
    (record,) = seeded.jobs.launched
    assert record.spec["secrets"] == {"HF_TOKEN": ALICE}
    shown = json.dumps({k: v for k, v in record.spec.items() if k != "secrets"}) + "\n".join(l for _, l in record.log)
    assert ALICE not in shown
    assert ALICE not in json.dumps(seeded.jobs.launched[0].to_json())


def test_refusals_are_typed_and_come_before_anything_runs(seeded):
    with pytest.raises(UnknownFlavorError, match="'cpu-giant' is not a Hugging Face Jobs flavor. Pick one of cpu-basic"):
        hf_jobs.launch_hf_job(SOURCE, "FP8_BLOCK", flavor="cpu-giant", token=ALICE)
    seeded.jobs.no_permission.add("alice")
    with pytest.raises(JobsPermissionError, match="may not run Hugging Face Jobs in 'alice'.*'jobs' permission"):
        hf_jobs.launch_hf_job(SOURCE, "FP8_BLOCK", token=ALICE)
    seeded.jobs.no_permission.clear()
    seeded.jobs.no_credit.add("alice")
    with pytest.raises(JobsCreditsError, match="'alice' has no credit left.*settings/billing"):
        hf_jobs.launch_hf_job(SOURCE, "FP8_BLOCK", token=ALICE)
    assert seeded.jobs.launched == []


def test_auto_is_the_plans_flavor_in_every_front_end(seeded):
    """CLI, Action and Space all say "auto"; the core alone turns it into the plan's pick."""
    planned = hf_jobs.plan_flavor(SOURCE, "FP8_BLOCK", token=ALICE)
    assert planned in hf_jobs.FLAVOR_RAM_GB
    for word in (None, "auto", " AUTO "):
        assert hf_jobs.resolve_flavor(word, SOURCE, "FP8_BLOCK", token=ALICE) == planned
    assert hf_jobs.resolve_flavor("cpu-xl", SOURCE, "FP8_BLOCK", token=ALICE) == "cpu-xl"
    with pytest.raises(UnknownFlavorError):
        hf_jobs.resolve_flavor("cpu-giant", SOURCE, "FP8_BLOCK", token=ALICE)


def test_a_failed_job_says_why(seeded):
    with pytest.raises(JobFailedError, match=r"failed: TargetRepoExistsError: .*alice/tiny-FP8-BLOCK"):
        seeded.seed_repo(TARGET, {"README.md": b"mine"})
        hf_jobs.run_on_hf_jobs(SOURCE, "FP8_BLOCK", flavor="cpu-basic", token=ALICE)


def test_a_job_past_its_timeout_is_a_timeout_error(seeded):
    with pytest.raises(JobTimedOutError, match="ran past its timeout.*run the same command again"):
        hf_jobs.run_on_hf_jobs(SOURCE, "FP8_BLOCK", flavor="cpu-basic", token=ALICE, timeout=1)


def _table_rows(markdown: str) -> list[str]:
    """The row names of a result table (values such as timings differ from run to run)."""
    return [line.split("|")[1].strip() for line in markdown.splitlines()[2:] if line.startswith("|")]


def test_cli_on_jobs_prints_what_a_local_run_prints_and_jobs_status_reattaches(seeded, local_fp8, monkeypatch, capsys):
    from ptq_core import cli

    monkeypatch.setenv("HF_TOKEN", ALICE)
    assert cli.main(["run", SOURCE, "--scheme", "FP8_BLOCK", "--on-jobs", "cpu-basic", "--collection", "tiny"]) == 0
    out, err = capsys.readouterr()
    (record,) = seeded.jobs.launched
    (collection,) = seeded.collections.collections.values()  # added by the job, with the user's token
    assert [i["id"] for i in collection["items"]] == [TARGET]
    assert out.endswith(f"\nCollection: {seeded.endpoint}/collections/{collection['slug']}\n")  # as a local run
    assert f"Launched Hugging Face Job {record.id} (bob/tiny -> FP8_BLOCK, cpu-basic): " in err
    _assert_equals_local(seeded, TARGET, local_fp8)
    head = seeded.commits(TARGET)[-1]["oid"]
    assert f"| commit | `{head[:10]}` |" in out
    # The table is the job's own HubResult.to_markdown(): a local run's rows, in its order.
    local_rows = ["repo", "scheme", "size before", "size after", "ratio", "commit", "peak disk", "time: plan",
                  "time: download", "time: quantize", "time: upload", "time: card", "time: commit", "time: total"]
    assert _table_rows(out) == local_rows

    assert cli.main(["jobs", "status", record.id]) == 0
    again, err = capsys.readouterr()
    assert again == out and f"Hugging Face Job {record.id}: COMPLETED" in err
    assert cli.main(["jobs", "logs", record.id]) == 0
    log, _ = capsys.readouterr()
    assert any(l.startswith("@@ptq ") and '"event":"result"' in l for l in log.splitlines())
    assert "===== Job started" not in log  # the client drops the Hub's own banner


def test_parts_on_jobs_and_a_killed_part_resumes(seeded, local_fp8):
    """K part jobs then a finalize job: one commit on main. A part killed mid-upload fails the run,
    keeps what the other part staged, and the same call again finishes without resending it."""
    seeded.configure(upload_bandwidth=400_000)  # ~1.4 MB per part: the kill lands mid-upload
    killer: list[threading.Thread] = []

    def kill_part_two(job: hf_jobs.HfJob) -> None:
        if "part 2/2" in job.label:
            def kill() -> None:
                seeded.jobs.wait_for_log(job.id, '"stage":"upload"')
                hf_jobs.cancel_hf_job(job, token=ALICE)
            killer.append(threading.Thread(target=kill))
            killer[-1].start()

    with pytest.raises(JobFailedError, match=r"\(bob/tiny -> FP8_BLOCK \(part 2/2\).* ended CANCELED.*resumes"):
        hf_jobs.run_on_hf_jobs(SOURCE, "FP8_BLOCK", parts=2, flavor="cpu-basic", token=ALICE, on_launch=kill_part_two)
    killer[0].join()
    (branch,) = [b for b in seeded.branches(TARGET) if b != "main"]
    staged = {p for p in seeded.list_files(TARGET, revision=branch) if p.endswith(".safetensors")}
    assert staged and seeded.list_files(TARGET) == [".gitattributes"]  # part 1 staged, main untouched
    sent_before = dict(seeded.stats.lfs_bytes)

    seeded.configure(upload_bandwidth=None)
    start, launches = len(seeded.requests_log), []
    result = hf_jobs.run_on_hf_jobs(SOURCE, "FP8_BLOCK", parts=2, flavor="auto", token=ALICE,
                                    on_launch=lambda job: launches.append(len(seeded.requests_log)))
    # One launcher for the 3 jobs: the runtime repo checked once (with it one whoami, one set of pins; the jobs
    # fetch the zip by its pinned commit, never this API). Before the first launch, one plan both sized the
    # flavor and cut the parts: config.json read once (was twice).
    asked = [p.split("?")[0] for m, p, _ in seeded.requests_log[start:] if m == "GET"]
    assert asked.count("/api/datasets/alice/ptq-hub-runtime") == 1
    before_launch = [p.split("?")[0] for m, p, _ in seeded.requests_log[start:launches[0]] if m == "GET"]
    assert sum(path.endswith("/config.json") for path in before_launch) == 1
    assert [j.spec["flavor"] for j in seeded.jobs.launched[-3:]] == ["cpu-basic"] * 3

    _assert_equals_local(seeded, TARGET, local_fp8)
    assert seeded.stats.commits.get((TARGET, "main")) == 1 and seeded.branches(TARGET) == {"main": result.commit_sha}
    labels = [job.spec["command"][-1] for job in seeded.jobs.launched]
    assert len(labels) == 2 + 3  # 2 parts (the second killed), then 2 parts and the finalize job
    for name in staged:  # what part 1 staged was sent once, by the first run
        oid = hashlib.sha256((local_fp8 / name).read_bytes()).hexdigest()
        assert seeded.stats.lfs_bytes[oid] == sent_before[oid] == (local_fp8 / name).stat().st_size
    assert set(seeded.stats.lfs_stored.values()) == {1}


def test_the_action_input_on_jobs_runs_the_job_there(seeded, local_fp8, tmp_path):
    from action.main import read_request, run

    outputs, summary = tmp_path / "out", tmp_path / "summary.md"
    environ = {"INPUT_MODEL": SOURCE, "INPUT_SCHEME": "FP8_BLOCK", "INPUT_ON_JOBS": "cpu-basic", "INPUT_HF_TOKEN": ALICE,
               "GITHUB_OUTPUT": str(outputs), "GITHUB_STEP_SUMMARY": str(summary)}
    log = io.StringIO()
    assert run(environ, log) == 0, log.getvalue()
    _assert_equals_local(seeded, TARGET, local_fp8)
    (record,) = seeded.jobs.launched
    assert f"Launched Hugging Face Job {record.id} (bob/tiny -> FP8_BLOCK, cpu-basic)" in log.getvalue()
    assert f"\n{TARGET}\n" in outputs.read_text() and outputs.read_text().startswith("repo-id<<")
    assert f"Ran as Hugging Face Job [{record.id}]({seeded.endpoint}/jobs/alice/{record.id})" in summary.read_text()
    shown = [line for line in log.getvalue().splitlines() if not line.startswith("::add-mask::")]
    assert ALICE not in "\n".join(shown) + summary.read_text()
    with pytest.raises(ptq_core.InvalidOptionError, match="`on-jobs` runs one model"):
        read_request({"INPUT_CONFIG": "recipe.yml", "INPUT_ON_JOBS": "auto"})


def test_an_unknown_job_id_is_named(seeded, monkeypatch, capsys):
    from ptq_core import cli

    monkeypatch.setenv("HF_TOKEN", ALICE)
    assert cli.main(["run", SOURCE, "--scheme", "FP8_BLOCK", "--parts", "2"]) == 2  # not silently local
    assert "error: --parts, --jobs-timeout and --cancel go with --on-jobs" in capsys.readouterr().err
    with pytest.raises(ptq_core.HfJobsError, match="There is no Hugging Face Job 0123abc in 'alice'"):
        hf_jobs.follow_hf_job("0123abc", token=ALICE)
    assert cli.main(["jobs", "status", "bob/0123abc"]) == 2
    assert "error: There is no Hugging Face Job 0123abc in 'bob' that this token can see (HTTP 403)" in capsys.readouterr().err


def test_the_space_launches_on_the_users_account_and_follows_the_job(seeded, local_fp8, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("ptq_space_jobs_panel", Path(__file__).parents[2] / "space" / "jobs_panel.py")
    panel = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(panel)
    options = {"ignore": [], "default_ignore": True, "observer": None, "target": None, "private": False,
               "overwrite": False}
    with pytest.raises(panel.gr.Error, match="Sign in first"):
        panel.launch_on_jobs(None, SOURCE, "FP8_BLOCK", options, panel.AUTO, [])

    older = {"id": "older", "namespace": "alice", "url": "u", "label": "x", "flavor": "cpu-basic"}
    recent, status = panel.launch_on_jobs(ALICE, SOURCE, "FP8_BLOCK", options, panel.AUTO, [older])
    (record,) = seeded.jobs.launched
    assert [j["id"] for j in recent] == [record.id, "older"]  # the browser keeps the newest first
    assert record.spec["flavor"] == "cpu-basic"  # the plan's pick for a tiny model
    assert status.startswith(f"**[Job {record.id}]({seeded.endpoint}/jobs/alice/{record.id})**")

    updates = list(panel.follow_latest_job(ALICE, recent))
    assert "download" in "".join(updates) and "COMPLETED" in updates[-1]
    assert f"| repo | [{TARGET}]({seeded.endpoint}/{TARGET}) |" in updates[-1]
    _assert_equals_local(seeded, TARGET, local_fp8)
    # A reopened tab follows the same job again: its log replays to the same result.
    assert list(panel.follow_latest_job(ALICE, recent))[-1].split("\n\n", 2)[-1] == updates[-1].split("\n\n", 2)[-1]
