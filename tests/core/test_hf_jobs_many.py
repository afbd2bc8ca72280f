"""Several schemes on Hugging Face Jobs: ONE job reads the source once and writes every scheme (issue 21).

End to end on the test Hub's Jobs API (``tests/hub_jobs_server.py``: each job really runs as a
subprocess against the same Hub, through the real ``huggingface_hub`` client), from the CLI,
the Action and the Space's handlers. The single-scheme job: tests/core/test_hf_jobs.py; the
local several-scheme run: tests/core/test_hubjob_many.py.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from factory import make_checkpoint

import ptq_core
from ptq_core import cli, hf_jobs
from ptq_core.errors import HubNetworkError, InvalidOptionError
from ptq_core.hubjob import ManyResult, quantize_many_to_hub
from ptq_core.job import make_job, make_jobs

ALICE, BOB = "hf_test_alice", "hf_test_bob"
SOURCE = "bob/tiny"
SCHEMES = ("FP8_BLOCK", "W4A16")
REPOS = {s: f"alice/tiny-{s.replace('_', '-')}" for s in SCHEMES}
THRESHOLD = 64 * 1024
_RANGE = re.compile(r"bytes=(\d+)-(\d+)")

pytestmark = pytest.mark.usefixtures("fast_retries")


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("llama") / "tiny", "llama", shards=4, num_hidden_layers=4)


@pytest.fixture(scope="module")
def local(llama, tmp_path_factory) -> dict[str, Path]:
    """Each scheme quantized locally: what its repo must hold, byte for byte."""
    outs = {}
    for scheme in SCHEMES:
        outs[scheme] = tmp_path_factory.mktemp("local") / scheme
        ptq_core.quantize_job(make_job(str(llama), scheme), outs[scheme])
    return outs


@pytest.fixture
def seeded(hub, llama):
    hub.configure(lfs_threshold=THRESHOLD)
    hub.seed_repo(SOURCE, {p.name: p for p in llama.iterdir() if p.is_file()})
    return hub


def _assert_equals_local(hub, scheme: str, local: dict[str, Path], *, weights_only: bool = False) -> None:
    """The repo holds the local run's files, byte for byte (``weights_only``: its shards and index)."""
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


def test_one_job_writes_every_scheme_from_one_read_and_prints_the_local_result(seeded, local, llama, monkeypatch,
                                                                             capsys):
    monkeypatch.setenv("HF_TOKEN", ALICE)
    start = len(seeded.requests_log)
    argv = ["run", SOURCE, "--scheme", ",".join(SCHEMES), "--on-jobs", "cpu-basic", "--collection", "tiny quantized"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()

    (record,) = seeded.jobs.launched  # ONE job for both schemes
    assert f"Launched Hugging Face Job {record.id} (bob/tiny -> FP8_BLOCK, W4A16, cpu-basic): " in err
    for scheme in SCHEMES:
        _assert_equals_local(seeded, scheme, local)
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


def test_a_scheme_that_fails_in_the_job_is_reported_failed_and_a_rerun_finishes_it(seeded, local, monkeypatch,
                                                                                  capsys):
    monkeypatch.setenv("HF_TOKEN", ALICE)
    batch = "tiny-W4A16.git/info/lfs/objects/batch"  # W4A16's uploads only: its first shard lands, then all fail
    seeded.on_request(batch, lambda *_: seeded.fail_requests(batch, 10_000, 520, method="POST"), nth=2, method="POST")

    assert cli.main(["run", SOURCE, "--scheme", ",".join(SCHEMES), "--on-jobs", "cpu-basic"]) == 1
    out, _ = capsys.readouterr()
    assert "### FP8_BLOCK\n" in out and "### W4A16: failed\n" in out and "staged on branch ptq-staging-" in out
    _assert_equals_local(seeded, "FP8_BLOCK", local)
    assert seeded.list_files(REPOS["W4A16"]) == [".gitattributes"]  # its main untouched, its staged work kept
    (record,) = seeded.jobs.launched
    assert record.stage == "ERROR"  # the job says it did not do everything
    followed = hf_jobs.follow_hf_job(record.id, token=ALICE)
    assert isinstance(followed, ManyResult) and list(followed.results) == ["FP8_BLOCK"]
    assert isinstance(followed.errors["W4A16"], HubNetworkError)  # its own class, read back from the job

    with seeded._lock:  # the outage is over: the same command finishes what is missing
        seeded._failures.clear()
    assert cli.main(["run", SOURCE, "--scheme", ",".join(SCHEMES), "--on-jobs", "cpu-basic"]) == 0
    assert capsys.readouterr().out.count("| commit |") == 2
    for scheme in SCHEMES:
        _assert_equals_local(seeded, scheme, local)
        assert seeded.stats.commits.get((REPOS[scheme], "main")) == 1


def test_parts_with_several_schemes_are_refused_before_anything_is_launched(seeded, monkeypatch, capsys):
    with pytest.raises(InvalidOptionError, match="2 schemes run as ONE job .*each scheme cuts its own output shards"):
        hf_jobs.run_on_hf_jobs(SOURCE, ",".join(SCHEMES), parts=2, token=ALICE)
    monkeypatch.setenv("HF_TOKEN", ALICE)
    assert cli.main(["run", SOURCE, "--scheme", ",".join(SCHEMES), "--on-jobs", "--parts", "2"]) == 2
    assert "--parts, --part and --finalize take one scheme" in capsys.readouterr().err
    assert seeded.jobs.launched == []


def test_the_action_runs_every_scheme_in_one_job(seeded, local, tmp_path):
    from action.main import read_request, run

    outputs, summary = tmp_path / "out", tmp_path / "summary.md"
    environ = {"INPUT_MODEL": SOURCE, "INPUT_SCHEME": "\n".join(SCHEMES), "INPUT_ON_JOBS": "cpu-basic",
               "INPUT_HF_TOKEN": ALICE, "GITHUB_OUTPUT": str(outputs), "GITHUB_STEP_SUMMARY": str(summary)}
    log = io.StringIO()
    assert run(environ, log) == 0, log.getvalue()
    (record,) = seeded.jobs.launched
    assert log.getvalue().count("Launched Hugging Face Job") == 1
    for scheme in SCHEMES:
        _assert_equals_local(seeded, scheme, local)
    repo_ids = outputs.read_text().split("repo-id<<")[1].splitlines()[1]
    assert json.loads(repo_ids) == [REPOS[s] for s in SCHEMES]  # outputs as lists, one entry per scheme
    assert summary.read_text().count(f"Ran as Hugging Face Job [{record.id}]") == 2
    with pytest.raises(InvalidOptionError, match="`parts`, `part` and `finalize` take one scheme"):
        read_request({**environ, "INPUT_PARTS": "2"})


def test_the_space_launches_one_job_for_the_scheme_and_also_quantize_into(seeded, local):
    spec = importlib.util.spec_from_file_location("ptq_space_jobs_panel_many",
                                                  Path(__file__).parents[2] / "space" / "jobs_panel.py")
    panel = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(panel)
    prefilled = "\n".join(ptq_core.suggest_ignore(ptq_core.plan_hub_model(SOURCE, "FP8_BLOCK", token=ALICE).plan))
    schemes, options = panel.form_request(SOURCE, "FP8_BLOCK", ["W4A16", "FP8_BLOCK"], prefilled,
                                          "alice/tiny-FP8-BLOCK", False, False, None, False)
    assert schemes == list(SCHEMES) and options["target"] is None  # several: each its own default name

    recent, status = panel.launch_on_jobs(ALICE, SOURCE, schemes, options, panel.AUTO, [])
    (record,) = seeded.jobs.launched
    assert recent[0]["label"] == "bob/tiny -> FP8_BLOCK, W4A16" and record.spec["flavor"] == "cpu-basic"
    updates = list(panel.follow_latest_job(ALICE, recent))
    assert "COMPLETED" in updates[-1]
    for scheme in SCHEMES:
        assert f"| repo | [{REPOS[scheme]}]({seeded.endpoint}/{REPOS[scheme]}) |" in updates[-1]
        # The Space's box holds the ignore list in its own words (config.json's `ignore` says them): same weights.
        _assert_equals_local(seeded, scheme, local, weights_only=True)


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
