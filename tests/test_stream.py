"""The streamed Hub job: Range reads, bounded disk, staging branch, one commit, resume, parts.

Every test drives the real huggingface_hub client against the loopback Hub server
(``hub`` fixture). Tiny seeded checkpoints; the LFS threshold is lowered so that
output shards take the path a multi-GB shard takes on the Hub. Outputs are compared
byte for byte with ``quantize_job`` of the same folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
import torch
from factory import make_checkpoint
from hub_server import LFS_CDN_PATH, LFS_UPLOAD_PATH
from huggingface_hub import HfApi

import ptq_core
from ptq_core import _http as hub_http
from ptq_core import cli, parts, stream
from ptq_core.hubjob import stage as hub_module
from ptq_core.errors import (
    DiskSpaceError,
    HubNetworkError,
    MemoryBudgetError,
    MissingPartError,
    PartMismatchError,
    SourceChangedError,
)
from ptq_core.hubjob import finalize_hub_job, plan_hub_model, plan_hub_parts, prepare_hub_job, quantize_to_hub, run_hub_job
from ptq_core.job import make_job
from ptq_core.remote import RemoteReader, open_remote_checkpoint
from ptq_core.source import inspect_source
from ptq_core.work_folders import new_work_folder

ALICE, BOB = "hf_test_alice", "hf_test_bob"
SOURCE = "bob/tiny"
THRESHOLD = 64 * 1024  # output shards (~0.4-0.8 MB) go through LFS, side files inline
ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("fast_retries")


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    """4 shards, 4 layers: ~5 MB of bf16, ~2.7 MB quantized to FP8_BLOCK."""
    return make_checkpoint(tmp_path_factory.mktemp("llama") / "tiny", "llama", shards=4, num_hidden_layers=4)


@pytest.fixture(scope="module")
def moe(tmp_path_factory) -> Path:
    """An MoE whose fused partners (q/k/v, gate/up per expert) sit in different input shards."""
    return make_checkpoint(tmp_path_factory.mktemp("moe") / "tiny", "qwen3_moe", shards=3, split_fused=True)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """``local_run(checkpoint, scheme)``: ``quantize_job`` of the folder with the same request, made once."""
    made: dict[tuple[str, str], Path] = {}

    def make(checkpoint: Path, scheme: str) -> Path:
        key = (str(checkpoint), scheme)
        if key not in made:
            out = tmp_path_factory.mktemp("local") / "out"
            ptq_core.quantize_job(make_job(str(checkpoint), scheme), out)
            made[key] = out
        return made[key]

    return make


def _seed(hub, checkpoint: Path, repo: str = SOURCE) -> None:
    hub.configure(lfs_threshold=THRESHOLD)
    hub.seed_repo(repo, {p.name: p for p in checkpoint.iterdir() if p.is_file()})


def _assert_equals_local(hub, target: str, local: Path) -> None:
    expected = {p.name for p in local.iterdir()}
    assert set(hub.list_files(target)) == expected | {".gitattributes", "README.md"}
    for name in sorted(expected):
        assert hub.read_file(target, name) == (local / name).read_bytes(), name


def _main_commits(hub, target: str) -> int:
    return hub.stats.commits.get((target, "main"), 0)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


# --- the streamed job ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("arch", "scheme", "workers", "redirect"),
    [("llama", "FP8_BLOCK", 1, False), ("moe", "NVFP4A16", 2, True)],
    ids=["llama-fp8-block", "moe-split-fused-nvfp4a16-cdn"],
)
def test_streamed_output_equals_a_local_run_in_one_commit(
    hub, request, tmp_path, local_run, arch, scheme, workers, redirect
):
    checkpoint = request.getfixturevalue(arch)
    _seed(hub, checkpoint)
    hub.configure(lfs_redirect=redirect)
    work = tmp_path / "work"
    seen: set[tuple[str, int]] = set()

    def progress(stage, done, total):  # no input file ever sits in the work folder
        seen.update((p.name, p.stat().st_size) for p in _files_under(work) if p.name.endswith(".safetensors"))

    result = quantize_to_hub(SOURCE, scheme, token=ALICE, work_dir=work, workers=workers, progress=progress)

    local = local_run(checkpoint, scheme)
    _assert_equals_local(hub, result.repo_id, local)
    outputs = {p.name: p.stat().st_size for p in local.glob("*.safetensors")}
    assert seen and all(size <= outputs[name] for name, size in seen)  # output shards only, never an input
    # Exactly one commit on main after the creation; the staging branch is gone.
    commits = hub.commits(result.repo_id)
    assert [c["oid"] for c in commits[1:]] == [result.commit_sha] and _main_commits(hub, result.repo_id) == 1
    assert set(commits[-1]["files"]) == set(hub.list_files(result.repo_id)) - {".gitattributes"}
    assert hub.branches(result.repo_id) == {"main": result.commit_sha}
    assert any(m == "POST" and "/preupload/ptq-staging-" in p for m, p, _ in hub.requests_log)  # via the branch
    # No input file on disk: nothing in the work folder or the client's cache afterwards.
    assert _files_under(work) == []
    assert not list(Path(hf_constants.HF_HOME).rglob("*.safetensors"))
    # Weight bytes came through Range requests only (on the Hub host, or on the CDN it redirects to).
    weight_gets = [h for m, p, h in hub.requests_log
                   if m == "GET" and (p.split("?")[0].endswith(".safetensors") or p.startswith(LFS_CDN_PATH))]
    assert weight_gets and all(h.get("range") for h in weight_gets)
    assert any(p.startswith(LFS_CDN_PATH) for _, p, _ in hub.requests_log) == redirect


def test_bounded_disk_on_a_tmpfs_smaller_than_the_model(hub, llama, tmp_path, local_run, monkeypatch):
    """Work folder, TMPDIR and HF_HOME on a 2 MB tmpfs; the model is 5 MB (2.7 MB quantized)."""
    model_bytes = sum(p.stat().st_size for p in llama.glob("*.safetensors"))
    mount = tmp_path / "small"
    mount.mkdir()
    size = 2 * 1024 * 1024
    assert size < model_bytes
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not permitted'})")
    try:
        hf_home = mount / "hf_home"
        monkeypatch.setenv("HF_HOME", str(hf_home))
        monkeypatch.setattr(hf_constants, "HF_HOME", str(hf_home))
        monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hf_home / "hub"))
        (mount / "tmp").mkdir()
        monkeypatch.setenv("TMPDIR", str(mount / "tmp"))
        monkeypatch.setattr(tempfile, "tempdir", str(mount / "tmp"))
        _seed(hub, llama)
        result = quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=mount / "work")
        _assert_equals_local(hub, result.repo_id, local_run(llama, "FP8_BLOCK"))
        assert 0 < result.peak_disk < size
        assert _files_under(mount / "work") == [] and _files_under(mount / "tmp") == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_disk_budget_below_the_model_bounds_the_measured_peak(hub, llama, tmp_path, local_run):
    _seed(hub, llama)
    work = tmp_path / "work"
    budget = 1_500_000  # about two output shards; the model is 5 MB, its output 2.7 MB
    peak = 0
    lock = threading.Lock()

    def progress(stage, done, total):
        nonlocal peak
        used = sum(p.stat().st_size for p in _files_under(work) if p.exists())
        with lock:
            peak = max(peak, used)

    result = quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=work, disk_budget=budget, progress=progress)

    assert result.footprint.disk_budget == budget and result.footprint.peak_disk <= budget
    assert 0 < peak <= budget and 0 < result.peak_disk <= budget
    assert peak < result.size_after  # never the whole output at once
    _assert_equals_local(hub, result.repo_id, local_run(llama, "FP8_BLOCK"))


def test_a_shard_larger_than_the_disk_budget_is_refused_before_any_write(hub, llama, tmp_path):
    _seed(hub, llama)
    with pytest.raises(DiskSpaceError, match=r"Output shard model-0000\d-of-00004.safetensors needs .* disk budget of "
                                             r"100.00 KB \(disk_budget\)"):
        quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=tmp_path / "work", disk_budget="100KB")
    assert not hub.repo_exists("alice/tiny-FP8-BLOCK")


def test_a_tensor_larger_than_the_ram_budget_is_refused(hub, llama, tmp_path, monkeypatch):
    _seed(hub, llama)
    monkeypatch.setattr(parts, "default_ram_budget", lambda: 1_000_000)
    with pytest.raises(MemoryBudgetError, match=r"The tensor .*\.weight is .*; quantizing it needs about .* more than "
                                                r"the 1.00 MB this job may use"):
        quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=tmp_path / "work")
    assert not hub.repo_exists("alice/tiny-FP8-BLOCK")


def test_plan_shows_peak_disk_and_ram_and_a_parts_matrix(hub, llama, capsys):
    _seed(hub, llama)
    plan = plan_hub_model(SOURCE, "FP8_BLOCK")
    fp = plan.footprint
    assert 0 < fp.peak_disk <= fp.disk_budget and 0 < fp.peak_ram <= fp.ram_budget
    assert "| disk: output shards awaiting upload |" in plan.to_markdown()
    assert plan.summary()["peak_disk"] == fp.peak_disk

    assert cli.main(["plan", SOURCE, "--scheme", "FP8_BLOCK", "--parts", "3", "--json"]) == 0
    matrix = json.loads(capsys.readouterr().out)
    sha = HfApi(endpoint=hub.endpoint).model_info(SOURCE).sha
    assert [e["part"] for e in matrix["include"]] == ["1/3", "2/3", "3/3"]
    assert {e["revision"] for e in matrix["include"]} == {sha}
    assert sum(e["shards"] for e in matrix["include"]) == 4
    split = plan_hub_parts(make_job(SOURCE, "FP8_BLOCK"), 3)
    assert sorted(s for p in split.parts for s in p) == sorted(split.plan.shards)
    loads = [sum(split.costs[s] for s in p) for p in split.parts]
    assert max(loads) - min(loads) <= max(split.costs.values())  # greedy by bytes
    with pytest.raises(ptq_core.InvalidOptionError, match="use between 1 and 4 parts"):
        plan_hub_parts(make_job(SOURCE, "FP8_BLOCK"), 5)


def test_parts_never_split_a_fused_group(moe):
    plan = ptq_core.plan_checkpoint(moe, scheme="NVFP4A16")
    assert any(g.split for g in plan.fused_groups)  # partners in different input shards
    split = parts.split_parts(plan, 3)
    part_of = {shard: i for i, shard_list in enumerate(split) for shard in shard_list}
    for index, _group in enumerate(plan.fused_groups):
        members = [item for item in plan.items if item.fused == index]
        assert len({part_of[item.shard] for item in members}) == 1


# --- resume --------------------------------------------------------------------------
_KILL_AFTER_FIRST_STAGED = """
import os, signal, sys
import ptq_core, ptq_core.hubjob.stage

ptq_core.hubjob.stage.STAGE_COMMIT_INTERVAL = 0  # stage each shard as it is uploaded (default: once a minute)

def progress(stage, done, total):
    if stage == "stage" and done >= 1:
        os.kill(os.getpid(), signal.SIGKILL)

ptq_core.quantize_to_hub(sys.argv[1], "FP8_BLOCK", work_dir=sys.argv[2], progress=progress)
"""


def _env(hub, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PTQ_"))}
    env.update(
        HF_ENDPOINT=hub.endpoint, HF_TOKEN=ALICE, HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp_path / "hf_home_sub"),
        PTQ_HUB_CACHE=str(tmp_path / "cache_sub"), PTQ_DISABLE_PROGRESS="1", PYTHONPATH=str(ROOT),
    )
    return env


def test_killed_run_resumes_and_the_server_receives_only_the_missing_bytes(hub, llama, tmp_path, local_run):
    _seed(hub, llama)
    work = tmp_path / "work"
    killed = subprocess.run([sys.executable, "-c", _KILL_AFTER_FIRST_STAGED, SOURCE, str(work)],
                            env=_env(hub, tmp_path), capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    target = "alice/tiny-FP8-BLOCK"
    (branch,) = [b for b in hub.branches(target) if b != "main"]
    assert hub.list_files(target) == [".gitattributes"]  # main shows no model
    leftover = list(work.iterdir())  # a SIGKILL leaves at most its work folder (named with its pid)
    assert len(leftover) <= 1 and all(p.name.startswith("ptq-job-") for p in leftover)
    staged = [s for s in hub.list_files(target, revision=branch) if s.endswith(".safetensors")]
    assert 1 <= len(staged) < 4  # the first commit (two upload threads: one or two shards)
    uploaded_before = dict(hub.stats.lfs_bytes)
    log_start = len(hub.requests_log)

    result = quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=work)

    local = local_run(llama, "FP8_BLOCK")
    _assert_equals_local(hub, target, local)
    assert _files_under(work) == [] and list(work.iterdir()) == []  # the killed run's folder is swept
    shards = sorted(p.name for p in local.glob("*.safetensors"))
    # A staged shard was sent once, by the killed run, and never again. Every other shard was sent
    # whole once (by either run: LFS is content-addressed, so a shard uploaded but not committed is
    # not sent again), plus at most the part of a transfer the SIGKILL cut (the other upload thread).
    size = {_sha256((local / s).read_bytes()): (local / s).stat().st_size for s in shards}
    for shard in staged:
        oid = _sha256((local / shard).read_bytes())
        assert uploaded_before[oid] == hub.stats.lfs_bytes[oid] == size[oid], shard
    assert set(hub.stats.lfs_bytes) == set(size)
    assert all(size[oid] <= sent < 2 * size[oid] for oid, sent in hub.stats.lfs_bytes.items())
    assert hub.stats.lfs_stored == dict.fromkeys(size, 1)
    # The rerun read no weight byte of a staged shard's input (llama: output shard i <- input shard i).
    for shard in staged:
        rerun_reads = [h["range"] for m, p, h in hub.requests_log[log_start:]
                       if m == "GET" and shard in p and "range" in h]
        assert rerun_reads and all(r.startswith("bytes=0-") for r in rerun_reads), shard  # its header only
    assert _main_commits(hub, target) == 1 and hub.branches(target) == {"main": result.commit_sha}


def test_upload_failure_after_a_staged_shard_keeps_it_and_the_rerun_resumes(
    hub, llama, tmp_path, local_run, monkeypatch
):
    monkeypatch.setattr(stream, "UPLOAD_THREADS", 1)  # so that the 4 failures hit one shard's 4 attempts
    monkeypatch.setattr(hub_module, "STAGE_COMMIT_INTERVAL", 0)  # each shard staged once uploaded
    _seed(hub, llama)
    target = "alice/tiny-FP8-BLOCK"

    def progress(stage, done, total):
        if stage == "stage" and done == 1:  # the next shard's upload fails 4 times (520: ptq-hub's retries)
            hub.fail_requests(LFS_UPLOAD_PATH, times=4, status=520, method="PUT")

    with pytest.raises(HubNetworkError, match=r"HTTP 520. Gave up after 4 attempts.* 1 of 4 output shard\(s\) of "
                                              r"this job are staged on branch ptq-staging-\w+ of alice/tiny-FP8-BLOCK"):
        quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=tmp_path / "work", progress=progress)
    assert hub.repo_exists(target) and hub.list_files(target) == [".gitattributes"]
    assert _files_under(tmp_path / "work") == []

    result = quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=tmp_path / "work")
    local = local_run(llama, "FP8_BLOCK")
    _assert_equals_local(hub, target, local)
    assert hub.stats.lfs_stored == {_sha256(p.read_bytes()): 1 for p in local.glob("*.safetensors")}
    assert hub.commits(target)[-1]["oid"] == result.commit_sha and _main_commits(hub, target) == 1


def test_rerun_after_a_failed_final_commit_only_commits(hub, llama, tmp_path, local_run):
    _seed(hub, llama)
    hub.fail_requests("/commit/main", times=4, status=500)  # every attempt of the final commit
    with pytest.raises(HubNetworkError, match="4 of 4 output shard"):
        quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=tmp_path / "work")
    puts, log_start = hub.stats.lfs_puts, len(hub.requests_log)
    result = quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=tmp_path / "work")
    assert hub.stats.lfs_puts == puts  # nothing uploaded again
    assert not [h for m, p, h in hub.requests_log[log_start:]
                if m == "GET" and p.endswith(".safetensors") and not h.get("range", "").startswith("bytes=0-")]
    _assert_equals_local(hub, result.repo_id, local_run(llama, "FP8_BLOCK"))
    # A third run of the whole job, the finalize step and a part all find the job done: its commit and URL.
    for again in (quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=tmp_path / "work"),
                  finalize_hub_job(SOURCE, "FP8_BLOCK", parts=1, token=ALICE, work_dir=tmp_path / "work"),
                  quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=tmp_path / "work", part="1/2")):
        assert (again.commit_sha, again.repo_url, again.part, again.branch) == (
            result.commit_sha, result.repo_url, None, None)
    assert _main_commits(hub, result.repo_id) == 1


# --- failures: typed, nothing on main, nothing left locally ------------------------------
def test_source_file_gone_mid_run(hub, llama, tmp_path):
    _seed(hub, llama)
    prepared = prepare_hub_job(make_job(SOURCE, "FP8_BLOCK"), token=ALICE, work_dir=tmp_path / "work")
    _seed(hub, llama)  # the source's history is rewritten: the pinned commit is gone
    with pytest.raises(SourceChangedError, match=r"model-0000\d-of-00004.safetensors of bob/tiny at commit \w{12} can "
                                                 r"no longer be read .* Rerun the job"):
        run_hub_job(prepared)
    assert not hub.repo_exists("alice/tiny-FP8-BLOCK")  # created by the run, nothing staged: deleted
    assert _files_under(tmp_path / "work") == []


def test_upload_5xx_before_anything_is_staged(hub, llama, tmp_path, caplog):
    _seed(hub, llama)
    hub.fail_requests(LFS_UPLOAD_PATH, times=10_000, status=520, method="PUT")
    with pytest.raises(HubNetworkError, match=r"Could not upload model-0000\d-of-00004.safetensors to .* HTTP 520. "
                                              r"Gave up after 4 attempts") as excinfo:
        quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=tmp_path / "work")
    assert "staged" not in str(excinfo.value)
    assert not hub.repo_exists("alice/tiny-FP8-BLOCK")
    assert _files_under(tmp_path / "work") == []


def test_disk_full_is_a_disk_space_error(hub, llama, tmp_path):
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not permitted'})")
    try:
        _seed(hub, llama)
        with pytest.raises(DiskSpaceError, match=r"The disk of .* filled up while writing output shard "
                                                 r"model-0000\d-of-00004.safetensors \(No space left on device\)"):
            # the budget claims more room than the disk has: the disk fills up first
            quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=mount, disk_budget="10MB")
        assert not hub.repo_exists("alice/tiny-FP8-BLOCK")  # nothing was staged: the created repo is gone
        assert _files_under(mount) == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)


# --- parts ---------------------------------------------------------------------------
def test_three_parts_in_three_processes_then_finalize_equal_a_one_machine_run(
    hub, llama, tmp_path, monkeypatch, capsys
):
    _seed(hub, llama)
    target = "alice/tiny-parts"
    env = _env(hub, tmp_path)
    runs = [subprocess.Popen([sys.executable, "-m", "ptq_core.cli", "run", SOURCE, "--scheme", "FP8_BLOCK",
                              "--to", target, "--part", f"{i}/3"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for i in (1, 2, 3)]
    for run in runs:
        out, err = run.communicate(timeout=180)
        assert run.returncode == 0, err
        assert "staged on branch `ptq-staging-" in out
    assert hub.list_files(target) == [".gitattributes"]  # parts never touch main
    (branch,) = [b for b in hub.branches(target) if b != "main"]
    manifests = [f for f in hub.list_files(target, revision=branch) if f.startswith(".ptq/")]
    assert manifests == [".ptq/part-1-of-3.json", ".ptq/part-2-of-3.json", ".ptq/part-3-of-3.json"]

    # The final step (in this process: one more interpreter start would only cost time).
    monkeypatch.setenv("HF_TOKEN", ALICE)
    assert cli.main(["run", SOURCE, "--scheme", "FP8_BLOCK", "--to", target, "--finalize", "3"]) == 0
    assert f"[{target}](" in capsys.readouterr().out
    one = quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, target="alice/tiny-one", work_dir=tmp_path / "w")
    for name in hub.list_files(one.repo_id):
        theirs = hub.read_file(target, name)
        if name == "README.md":  # names its own repo
            theirs = theirs.replace(b"tiny-parts", b"tiny-one")
        assert theirs == hub.read_file(one.repo_id, name), name
    assert set(hub.list_files(target)) == set(hub.list_files(one.repo_id))
    assert _main_commits(hub, target) == 1 and list(hub.branches(target)) == ["main"]


def test_rerun_of_a_finished_part_does_nothing(hub, llama, tmp_path):
    _seed(hub, llama)
    job = make_job(SOURCE, "FP8_BLOCK", target="alice/p", part="1/2")
    first = quantize_to_hub(job, token=ALICE, work_dir=tmp_path / "w")
    assert first.part == (1, 2) and first.commit_sha == hub.branches("alice/p")[first.branch]
    commits, log_start = dict(hub.stats.commits), len(hub.requests_log)
    again = quantize_to_hub(job, token=ALICE, work_dir=tmp_path / "w")
    assert again.commit_sha == first.commit_sha and hub.stats.commits == commits
    assert not [p for m, p, h in hub.requests_log[log_start:] if m in ("PUT", "POST") and "commit" in p]
    assert not [p for m, p, h in hub.requests_log[log_start:]
                if m == "GET" and p.endswith(".safetensors") and not h.get("range", "").startswith("bytes=0-")]


def test_finalize_names_a_missing_part(hub, llama, tmp_path):
    _seed(hub, llama)
    quantize_to_hub(make_job(SOURCE, "FP8_BLOCK", target="alice/p", part="1/2"), token=ALICE, work_dir=tmp_path)
    with pytest.raises(MissingPartError, match=r"Part 2/2 has not been staged: no .ptq/part-2-of-2.json on "
                                               r"alice/p@ptq-staging-\w+ \(found part\(s\) 1/2\)"):
        finalize_hub_job(SOURCE, "FP8_BLOCK", target="alice/p", parts=2, token=ALICE, work_dir=tmp_path)
    assert hub.list_files("alice/p") == [".gitattributes"]


@pytest.mark.parametrize("differs", ["scheme", "ignore", "revision"])
def test_finalize_refuses_a_part_of_another_job(hub, llama, tmp_path, differs):
    _seed(hub, llama)
    sha = HfApi(endpoint=hub.endpoint).model_info(SOURCE).sha
    base = dict(target="alice/p", revision=sha)
    quantize_to_hub(make_job(SOURCE, "FP8_BLOCK", part="1/2", **base), token=ALICE, work_dir=tmp_path)
    other = dict(base)
    scheme = "FP8_BLOCK"
    if differs == "scheme":
        scheme = "W8A16"
    elif differs == "ignore":
        other["ignore"] = ["re:.*down_proj$"]
    else:
        HfApi(endpoint=hub.endpoint, token=BOB).upload_file(path_or_fileobj=b"new", path_in_repo="notes.txt",
                                                            repo_id=SOURCE)
        other["revision"] = None  # the new head
    quantize_to_hub(make_job(SOURCE, scheme, part="2/2", **other), token=ALICE, work_dir=tmp_path)
    words = {"scheme": "scheme: FP8_BLOCK here, W8A16 in the part", "ignore": "ignore list: ",
             "revision": f"source revision: {sha} here, "}[differs]
    with pytest.raises(PartMismatchError, match=rf"Part 2/2 was staged by a different job \(branch ptq-staging-\w+ of "
                                                rf"alice/p\): .*{words}"):
        finalize_hub_job(make_job(SOURCE, "FP8_BLOCK", **base), parts=2, token=ALICE, work_dir=tmp_path)
    assert hub.list_files("alice/p") == [".gitattributes"]


# --- pieces --------------------------------------------------------------------------
def test_remote_reader_coalesces_and_resumes_a_broken_range(hub, moe, caplog):
    _seed(hub, moe)
    http = hub_http.HubHttp(ALICE)
    state = inspect_source(http, SOURCE, None)
    checkpoint = open_remote_checkpoint(http, state)
    assert {n: (t.shard, t.offset, t.nbytes) for n, t in checkpoint.tensors.items()} == {
        n: (t.shard, t.offset, t.nbytes) for n, t in ptq_core.checkpoint.open_checkpoint(moe).tensors.items()}
    infos = sorted(checkpoint.tensors.values(), key=lambda t: (t.shard, t.offset))
    reads = [[(t.shard, t.offset, t.nbytes)] for t in infos]
    hub.fail_requests(".safetensors", times=1, status=520, method="GET")
    with RemoteReader(http, state, checkpoint, reads, window=1 << 20, threads=2, gap=1 << 20) as reader:
        assert reader.span_count == len(checkpoint.shards)  # each shard's tensors are adjacent: one span each
        for info in infos:
            out = torch.empty(info.nbytes, dtype=torch.uint8)
            reader.read_into(info, out)
            with open(moe / info.shard, "rb") as f:
                f.seek(info.offset)
                assert out.numpy().tobytes() == f.read(info.nbytes), info.name
    assert "retry 1/3" in caplog.text


def test_stale_work_folder_of_a_dead_run_is_removed(hub, llama, tmp_path):
    _seed(hub, llama)
    work = tmp_path / "work"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = work / f"ptq-job-{dead.stdout.strip()}-0123456789ab"
    stale.mkdir(parents=True)
    (stale / "model-00001-of-00004.safetensors").write_bytes(b"half")
    live = new_work_folder(work, "ptq-job-")  # a live run holds its folder (a lock): it is kept
    quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=work)
    assert list(work.iterdir()) == [live.path]
    live.remove()


def test_job_takes_a_disk_budget_and_a_part():
    job = make_job(SOURCE, "FP8_BLOCK", disk_budget="1.5GB", part="2/3")
    assert (job.disk_budget, job.part) == (1_500_000_000, (2, 3))
    assert make_job(SOURCE, "FP8_BLOCK", disk_budget=10, part=(1, 1)).disk_budget == 10
    assert ptq_core.sizes.parse_size("512 MiB") == 512 * 1024**2
    for bad in ("0/3", "4/3", "2-3", "a/b", (2, 0)):
        with pytest.raises(ptq_core.InvalidOptionError, match=r"is not a part: write I/K with 1 <= I <= K"):
            make_job(SOURCE, "FP8_BLOCK", part=bad)
    for bad in ("lots", "-1GB", -5, "1.5 XB"):
        with pytest.raises(ptq_core.InvalidOptionError, match=r"disk_budget=.* (is not a size|is negative)"):
            make_job(SOURCE, "FP8_BLOCK", disk_budget=bad)
    with pytest.raises(ptq_core.InvalidOptionError, match="finalize combines all parts"):
        finalize_hub_job(make_job(SOURCE, "FP8_BLOCK", part="1/2"), parts=2)


def test_a_streamed_fp8_block_source_equals_a_local_run(hub, tmp_path):
    """DeepSeek-style FP8 sources stream too: each weight_scale_inv is fetched with its weight."""
    from factory import make_fp8_block_checkpoint

    checkpoint = make_fp8_block_checkpoint(tmp_path / "fp8", "deepseek_v3", shards=2, split_fused=True)
    _seed(hub, checkpoint)
    result = quantize_to_hub(SOURCE, "NVFP4A16", token=ALICE, work_dir=tmp_path / "work")
    local = tmp_path / "local"
    ptq_core.quantize_job(make_job(str(checkpoint), "NVFP4A16"), local)
    _assert_equals_local(hub, result.repo_id, local)
    assert "source: FP8 blocks (128x128), dequantized in memory" in result.plan.to_markdown()
