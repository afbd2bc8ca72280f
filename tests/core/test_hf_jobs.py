"""``--on-jobs``: a streamed Hub job run as a Hugging Face Job, end to end on the test Hub.

The test Hub's Jobs API (``tests/hub_jobs_server.py``) runs each job's command as a real
subprocess against the same server, through the real ``huggingface_hub`` client: what the
container runs (the uploaded ptq-hub zip, the bootstrap, the pins) is what is tested.
Several schemes are ONE job (the second half): from the CLI, the Action and the Space's handlers.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import re
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from factory import make_checkpoint

import ptq_core
from ptq_core import cli, hf_jobs
from ptq_core.errors import (
    HubNetworkError,
    InvalidOptionError,
    JobFailedError,
    JobsCreditsError,
    JobsPermissionError,
    JobTimedOutError,
    UnknownFlavorError,
)
from ptq_core.hubjob import ManyResult, quantize_many_to_hub
from ptq_core.job import make_job, make_jobs

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


def _jobs_panel():
    """The Space's jobs panel module, loaded by path as the Space loads it (its handlers, no page)."""
    spec = importlib.util.spec_from_file_location("ptq_space_jobs_panel", Path(__file__).parents[2] / "space" / "jobs_panel.py")
    panel = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(panel)
    return panel


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
    monkeypatch.setenv("HF_TOKEN", ALICE)
    assert cli.main(["run", SOURCE, "--scheme", "FP8_BLOCK", "--parts", "2"]) == 2  # not silently local
    assert "error: --parts, --jobs-timeout and --cancel go with --on-jobs" in capsys.readouterr().err
    with pytest.raises(ptq_core.HfJobsError, match="There is no Hugging Face Job 0123abc in 'alice'"):
        hf_jobs.follow_hf_job("0123abc", token=ALICE)
    assert cli.main(["jobs", "status", "bob/0123abc"]) == 2
    assert "error: There is no Hugging Face Job 0123abc in 'bob' that this token can see (HTTP 403)" in capsys.readouterr().err


def test_the_space_launches_on_the_users_account_and_follows_the_job(seeded, local_fp8, monkeypatch):
    panel = _jobs_panel()
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


# --- several schemes: ONE job reads the source once and writes every scheme (issue 21) ----------------
SCHEMES = ("FP8_BLOCK", "W4A16")
REPOS = {s: f"alice/tiny-{s.replace('_', '-')}" for s in SCHEMES}
BOB = "hf_test_bob"
_RANGE = re.compile(r"bytes=(\d+)-(\d+)")


@pytest.fixture(scope="module")
def local_many(llama, local_fp8, tmp_path_factory) -> dict[str, Path]:
    """Each scheme quantized locally: what its repo must hold, byte for byte."""
    w4a16 = tmp_path_factory.mktemp("local") / "W4A16"
    ptq_core.quantize_job(make_job(str(llama), "W4A16"), w4a16)
    return {"FP8_BLOCK": local_fp8, "W4A16": w4a16}


def _assert_scheme_equals_local(hub, scheme: str, local: dict[str, Path], *, weights_only: bool = False) -> None:
    """The scheme's repo holds the local run's files, byte for byte (``weights_only``: its shards and index)."""
    expected = {p.name for p in local[scheme].iterdir()}
    assert set(hub.list_files(REPOS[scheme])) == expected | {".gitattributes", "README.md"}
    for name in sorted(expected):
        if weights_only and not name.startswith("model"):
            continue
        assert hub.read_file(REPOS[scheme], name) == (local[scheme] / name).read_bytes(), (scheme, name)


def _weight_bytes_served(hub, since: int) -> int:
    """Bytes of the source's weight files served by Range GETs after request ``since`` (header reads left out)."""
    served = 0
    for method, path, headers in hub.requests_log[since:]:
        if method == "GET" and "/bob/tiny/" in path and path.split("?")[0].endswith(".safetensors"):
            match = _RANGE.fullmatch(headers.get("range", ""))
            if match and int(match[1]) > 0:
                served += int(match[2]) - int(match[1]) + 1
    return served


def _shape(markdown: str) -> list[str]:
    """A result's lines without the values that differ between two runs (timings, commits, owners)."""
    return [line.split("|")[1].strip() if line.startswith("| ") else line.split(":")[0]
            for line in markdown.splitlines()]


def test_one_job_writes_every_scheme_from_one_read_and_prints_the_local_result(seeded, local_many, llama, monkeypatch,
                                                                             capsys):
    monkeypatch.setenv("HF_TOKEN", ALICE)
    start = len(seeded.requests_log)
    argv = ["run", SOURCE, "--scheme", ",".join(SCHEMES), "--on-jobs", "cpu-basic", "--collection", "tiny quantized"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()

    (record,) = seeded.jobs.launched  # ONE job for both schemes
    assert f"Launched Hugging Face Job {record.id} (bob/tiny -> FP8_BLOCK, W4A16, cpu-basic): " in err
    for scheme in SCHEMES:
        _assert_scheme_equals_local(seeded, scheme, local_many)
        assert seeded.stats.commits.get((REPOS[scheme], "main")) == 1
    source_bytes = sum(p.stat().st_size for p in llama.glob("*.safetensors"))
    assert 0 < _weight_bytes_served(seeded, start) <= source_bytes  # the source was read once, in the job
    (collection,) = seeded.collections.collections.values()  # added in the job, with the user's token
    assert [i["id"] for i in collection["items"]] == [REPOS[s] for s in SCHEMES]

    # Printed as a local several-scheme run prints it: the same sections, rows and shared-download line.
    here = quantize_many_to_hub(make_jobs(SOURCE, ",".join(SCHEMES)), token=BOB, collection="tiny quantized")
    assert _shape(out.rstrip("\n")) == _shape(here.to_markdown().rstrip("\n"))
    assert out.count("| commit |") == 2 and "### W4A16\n" in out
    assert here.to_markdown().splitlines()[-1].split(";")[0] in out  # same bytes downloaded, once

    # Reattach: the same result, read back from the job's log, after one inspection of the job.
    inspected = f"/api/jobs/alice/{record.id}"
    before = len(seeded.requests_log)
    assert cli.main(["jobs", "status", record.id]) == 0
    again, err = capsys.readouterr()
    assert again == out and f"Hugging Face Job {record.id}: COMPLETED" in err
    gets = [p for m, p, _ in seeded.requests_log[before:] if m == "GET" and p.split("?")[0] == inspected]
    # ours: the one inspection that checks the id and gives the stage, then the end; the client's log stream
    # asks once more when it ends. Was 4: `status` inspected the job, then the follower again.
    assert len(gets) == 3


def test_a_scheme_that_fails_in_the_job_is_reported_failed_and_a_rerun_finishes_it(seeded, local_many, monkeypatch,
                                                                                  capsys):
    monkeypatch.setenv("HF_TOKEN", ALICE)
    batch = "tiny-W4A16.git/info/lfs/objects/batch"  # W4A16's uploads only: its first shard lands, then all fail
    seeded.on_request(batch, lambda *_: seeded.fail_requests(batch, 10_000, 520, method="POST"), nth=2, method="POST")

    assert cli.main(["run", SOURCE, "--scheme", ",".join(SCHEMES), "--on-jobs", "cpu-basic"]) == 1
    out, _ = capsys.readouterr()
    assert "### FP8_BLOCK\n" in out and "### W4A16: failed\n" in out and "staged on branch ptq-staging-" in out
    _assert_scheme_equals_local(seeded, "FP8_BLOCK", local_many)
    assert seeded.list_files(REPOS["W4A16"]) == [".gitattributes"]  # its main untouched, its staged work kept
    (record,) = seeded.jobs.launched
    assert record.stage == "ERROR"  # the job says it did not do everything
    followed = hf_jobs.follow_hf_job(record.id, token=ALICE)
    assert isinstance(followed, ManyResult) and list(followed.results) == ["FP8_BLOCK"]
    assert isinstance(followed.errors["W4A16"], HubNetworkError)  # its own class, read back from the job
    entry = {"id": record.id, "namespace": "alice", "url": "u", "label": "x", "flavor": "cpu-basic"}
    shown = list(_jobs_panel().follow_latest_job(ALICE, [entry]))[-1]  # the Space says so too
    assert "ERROR (a scheme failed" in shown and "### W4A16: failed" in shown and "| repo | [alice/tiny-FP8" in shown

    with seeded._lock:  # the outage is over: the same command finishes what is missing
        seeded._failures.clear()
    assert cli.main(["run", SOURCE, "--scheme", ",".join(SCHEMES), "--on-jobs", "cpu-basic"]) == 0
    assert capsys.readouterr().out.count("| commit |") == 2
    for scheme in SCHEMES:
        _assert_scheme_equals_local(seeded, scheme, local_many)
        assert seeded.stats.commits.get((REPOS[scheme], "main")) == 1


def test_parts_with_several_schemes_are_refused_before_anything_is_launched(seeded, monkeypatch, capsys):
    with pytest.raises(InvalidOptionError, match="2 schemes run as ONE job .*each scheme cuts its own output shards"):
        hf_jobs.run_on_hf_jobs(SOURCE, ",".join(SCHEMES), parts=2, token=ALICE)
    for step in ({"finalize": 2}, {"part": "1/2"}):  # never a whole several-scheme run in place of the step asked
        with pytest.raises(InvalidOptionError, match="take one scheme"):
            hf_jobs.launch_hf_job(SOURCE, list(SCHEMES), flavor="cpu-basic", token=ALICE, **step)
    monkeypatch.setenv("HF_TOKEN", ALICE)
    assert cli.main(["run", SOURCE, "--scheme", ",".join(SCHEMES), "--on-jobs", "--parts", "2"]) == 2
    assert "--parts, --part and --finalize take one scheme" in capsys.readouterr().err
    assert seeded.jobs.launched == []


def test_the_action_runs_every_scheme_in_one_job(seeded, local_many, tmp_path):
    from action.main import read_request, run

    outputs, summary = tmp_path / "out", tmp_path / "summary.md"
    environ = {"INPUT_MODEL": SOURCE, "INPUT_SCHEME": "\n".join(SCHEMES), "INPUT_ON_JOBS": "cpu-basic",
               "INPUT_HF_TOKEN": ALICE, "GITHUB_OUTPUT": str(outputs), "GITHUB_STEP_SUMMARY": str(summary)}
    log = io.StringIO()
    assert run(environ, log) == 0, log.getvalue()
    (record,) = seeded.jobs.launched
    assert log.getvalue().count("Launched Hugging Face Job") == 1
    for scheme in SCHEMES:
        _assert_scheme_equals_local(seeded, scheme, local_many)
    repo_ids = outputs.read_text().split("repo-id<<")[1].splitlines()[1]
    assert json.loads(repo_ids) == [REPOS[s] for s in SCHEMES]  # outputs as lists, one entry per scheme
    assert summary.read_text().count(f"Ran as Hugging Face Job [{record.id}]") == 2
    with pytest.raises(InvalidOptionError, match="`parts`, `part` and `finalize` take one scheme"):
        read_request({**environ, "INPUT_PARTS": "2"})


def test_the_space_launches_one_job_for_the_scheme_and_also_quantize_into(seeded, local_many):
    panel = _jobs_panel()
    prefilled = "\n".join(ptq_core.suggest_ignore(ptq_core.plan_hub_model(SOURCE, "FP8_BLOCK", token=ALICE).plan))
    schemes, options = panel.form_request(SOURCE, "FP8_BLOCK", ["W4A16", "FP8_BLOCK"], prefilled,
                                          "alice/tiny-FP8-BLOCK", False, False, None, False)
    assert schemes == list(SCHEMES) and options["target"] == "alice/"  # several: each its default name there

    recent, status = panel.launch_on_jobs(ALICE, SOURCE, schemes, options, panel.AUTO, [])
    (record,) = seeded.jobs.launched
    assert recent[0]["label"] == "bob/tiny -> FP8_BLOCK, W4A16" and record.spec["flavor"] == "cpu-basic"
    updates = list(panel.follow_latest_job(ALICE, recent))
    assert "COMPLETED" in updates[-1]
    for scheme in SCHEMES:
        assert f"| repo | [{REPOS[scheme]}]({seeded.endpoint}/{REPOS[scheme]}) |" in updates[-1]
        # The Space's box holds the ignore list in its own words (config.json's `ignore` says them): same weights.
        _assert_scheme_equals_local(seeded, scheme, local_many, weights_only=True)


def _plan(peak_ram: int, unit: int, shard: int, workers: int = 2) -> SimpleNamespace:
    return SimpleNamespace(budgets=SimpleNamespace(workers=workers), footprint=SimpleNamespace(
        peak_ram=peak_ram, largest_unit_bytes=unit, largest_shard_bytes=shard))


def test_auto_sizes_the_flavor_for_the_fan_out():
    """One read for three schemes: the largest scheme's RAM plus a joint unit per worker, a shard per scheme on disk."""
    one = _plan(peak_ram=8 * 10**9, unit=2 * 10**9, shard=7 * 10**9)
    assert hf_jobs.fan_out_need([one]) == (8 * 10**9, 7 * 10**9)
    ram, disk = hf_jobs.fan_out_need([one, _plan(6 * 10**9, 3 * 10**9, 5 * 10**9), _plan(1, 1, 1)])
    assert (ram, disk) == (8 * 10**9 + 2 * 3 * 10**9, 3 * 7 * 10**9)
    assert hf_jobs.suggest_flavor(*hf_jobs.fan_out_need([one])) == "cpu-basic"  # 16 GB RAM, 20 GB disk hold it
    assert hf_jobs.suggest_flavor(8 * 10**9, 3 * 7 * 10**9) == "cpu-upgrade"  # three shards: past cpu-basic's disk
    assert hf_jobs.suggest_flavor(ram, disk) == "cpu-upgrade"
    assert hf_jobs.suggest_flavor(100 * 10**9, 0) == "cpu-xl"


def test_auto_plans_every_scheme_of_the_request(seeded):
    planned = hf_jobs.plan_flavor(SOURCE, ",".join(SCHEMES), token=ALICE)
    assert planned == hf_jobs.resolve_flavor("auto", SOURCE, list(SCHEMES), token=ALICE) == "cpu-basic"
