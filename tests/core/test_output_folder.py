"""Publication never replaces what the run did not create; dead runs' work is swept; OS errors are typed.

Races are made deterministic with the pipeline's progress callback: ``("write", 0, 1)``
fires after every shard is written and before the output is published, and
``("validate", 1, 1)`` right after the work folder exists.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from factory import TINY_LLAMA_DIMS, make_checkpoint

import ptq_core.output_folder as output_folder
from ptq_core import model_free_ptq
from ptq_core.errors import (
    DiskSpaceError,
    OutputExistsError,
    OutputLocationError,
    OutputNotWritableError,
    PtqError,
)
from ptq_core.plan import OutputTensor
from ptq_core.output_folder import check_free_space, discard_output, prepare_output, publish_output
from ptq_core.work_folders import new_work_folder, sweep_stale_work
from ptq_core.writer import ShardWriter

DIMS = TINY_LLAMA_DIMS
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def src(tmp_path) -> Path:
    return make_checkpoint(tmp_path / "src", "llama", **DIMS)


@pytest.fixture(params=["renameat2", "fallback"])
def rename_impl(request, monkeypatch):
    """Run a test with renameat2 and again with the rename(2) fallback of systems without it."""
    if request.param == "renameat2" and output_folder._renameat2 is None:
        pytest.skip("no renameat2 here")
    if request.param == "fallback":
        monkeypatch.setattr(output_folder, "_renameat2", None)
    return request.param


def work_folders(parent: Path, name: str = "out") -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}.ptq-"))


def scheme_of(out: Path) -> str:
    return json.loads((out / "config.json").read_text())["quantization_config"]["format"]


def at(stage: str, done: int, action):
    """A progress callback that runs ``action`` once when ``(stage, done)`` is reported."""
    def progress(s: str, d: int, total: int) -> None:
        if (s, d) == (stage, done):
            action()
    return progress


# --------------------------------------------------------------------------- publication


def test_file_appearing_in_the_empty_output_during_the_run_survives(src, tmp_path, rename_impl):
    out = tmp_path / "out"
    out.mkdir()
    notes = out / "notes.txt"
    with pytest.raises(OutputExistsError, match=r"out received files during the run \(notes\.txt\); they were left "
                                                r"as they are\. Another run may be writing there"):
        model_free_ptq(src, out, "FP8_BLOCK", progress=at("write", 0, lambda: notes.write_text("mine")))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and notes.read_text() == "mine"
    assert work_folders(tmp_path) == []


def test_file_appearing_at_the_output_path_survives(src, tmp_path, rename_impl):
    out = tmp_path / "out"
    with pytest.raises(OutputExistsError, match=r"out appeared during the run and is not a folder; it was left"):
        model_free_ptq(src, out, "FP8_BLOCK", progress=at("write", 0, lambda: out.write_text("a file")))
    assert out.read_text() == "a file"
    assert work_folders(tmp_path) == []


def test_empty_output_folder_is_replaced_when_still_empty(src, tmp_path, rename_impl):
    out = tmp_path / "out"
    out.mkdir()
    model_free_ptq(src, out, "FP8_BLOCK")
    assert scheme_of(out) == "float-quantized"
    assert work_folders(tmp_path) == []


def test_overwrite_replaces_the_previous_output(src, tmp_path, rename_impl):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous")
    model_free_ptq(src, out, "W4A16", overwrite=True)
    assert not (out / "old.txt").exists() and scheme_of(out) == "pack-quantized"
    # ... also when the output appeared only during the run
    (tmp_path / "fresh").mkdir()
    fresh = tmp_path / "fresh" / "out"
    model_free_ptq(src, fresh, "FP8_BLOCK", overwrite=True,
                   progress=at("write", 0, lambda: (fresh.mkdir(), (fresh / "x").write_text("x"))))
    assert not (fresh / "x").exists() and scheme_of(fresh) == "float-quantized"
    assert work_folders(tmp_path) == [] and work_folders(tmp_path / "fresh") == []


_RACER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ptq_core import model_free_ptq
    from ptq_core.errors import PtqError
    src, out, ready, go = map(Path, sys.argv[1:5])
    def hold(stage, done, total):
        if (stage, done) == ("write", 0):  # everything written, not yet published
            ready.touch()
            deadline = time.monotonic() + 120
            while not go.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
    try:
        model_free_ptq(src, out, "W4A16", progress=hold)
    except PtqError as err:
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(2)
""")


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early: {proc.communicate()}")
        assert time.monotonic() < deadline, "child never reached the barrier"
        time.sleep(0.02)


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "PTQ_DISABLE_PROGRESS": "1"}


def test_two_processes_racing_for_one_output(src, tmp_path):
    """B is held just before publishing; A publishes first; B must fail and leave A's output alone."""
    out, ready, go = tmp_path / "out", tmp_path / "ready", tmp_path / "go"
    b = subprocess.Popen([sys.executable, "-c", _RACER, str(src), str(out), str(ready), str(go)],
                         env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(ready, b)
        model_free_ptq(src, out, "FP8_BLOCK")  # A: second to start, first to finish
        a_files = {p.name: p.read_bytes() for p in out.iterdir()}
        go.touch()
        _, stderr = b.communicate(timeout=120)
    finally:
        b.kill()
    assert b.returncode == 2, stderr
    assert re.search(r"OutputExistsError: .*out received files during the run \(.*config\.json.*\); they were "
                     "left as they are", stderr), stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == a_files
    assert scheme_of(out) == "float-quantized"
    assert work_folders(tmp_path) == []


def test_two_runs_racing_in_one_process(src, tmp_path, rename_impl):
    """The same race between two threads (the Space runs jobs side by side), with each rename."""
    out = tmp_path / "out"
    ready, go = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def hold(stage: str, done: int, total: int) -> None:
        if (stage, done) == ("write", 0):
            ready.set()
            go.wait(60)

    def run_b() -> None:
        try:
            model_free_ptq(src, out, "W4A16", progress=hold)
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            failure.append(err)

    b = threading.Thread(target=run_b)
    b.start()
    assert ready.wait(60)
    model_free_ptq(src, out, "FP8_BLOCK")
    go.set()
    b.join(60)
    assert len(failure) == 1 and isinstance(failure[0], OutputExistsError), failure
    assert "received files during the run" in str(failure[0])
    assert scheme_of(out) == "float-quantized"
    assert work_folders(tmp_path) == []


# --------------------------------------------------------------------------- stale work


_KILLED = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ptq_core import model_free_ptq
    src, out, ready = map(Path, sys.argv[1:4])
    def hang(stage, done, total):
        if (stage, done) == ("validate", 1):  # the work folder exists now
            ready.touch()
            time.sleep(600)
    model_free_ptq(src, out, "FP8_BLOCK", progress=hang)
""")


def test_sigkill_then_rerun_removes_the_dead_runs_work(src, tmp_path, caplog):
    out, ready = tmp_path / "out", tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", _KILLED, str(src), str(out), str(ready)], env=child_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(ready, child)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    left = work_folders(tmp_path)
    assert len(left) == 1 and re.fullmatch(rf"\.out\.ptq-tmp-{child.pid}-[0-9a-f]{{8}}", left[0]), left
    with caplog.at_level(logging.WARNING, logger="ptq_core.work_folders"):
        model_free_ptq(src, out, "FP8_BLOCK")
    assert work_folders(tmp_path) == []
    assert f"Removed {tmp_path / left[0]}: left behind by process {child.pid}, which is no longer running." \
        in caplog.messages
    assert scheme_of(out) == "float-quantized"


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("prefix", [".out.ptq-tmp-", "job-"])
def test_sweep_removes_only_dead_owners_folders(tmp_path, prefix, caplog):
    dead = tmp_path / f"{prefix}{dead_pid()}-0a1b2c3d"
    alive = tmp_path / f"{prefix}{os.getppid()}-0a1b2c3d"  # our parent: alive, older than the folder
    previous_me = tmp_path / f"{prefix}{os.getpid()}-00000000"  # same pid as us, but not ours
    for folder in (dead, alive, previous_me):
        folder.mkdir()
        (folder / "shard.safetensors").write_bytes(b"x" * 10)
    unrelated = [tmp_path / f"{prefix}notapid-00", tmp_path / f"{prefix}123", tmp_path / f"{prefix}1-xyz",
                 tmp_path / "other-1-ab"]
    for folder in unrelated:
        folder.mkdir()
    (tmp_path / f"{prefix}1-ab").write_text("a file, not a folder")
    (tmp_path / f"{prefix}2-ab").symlink_to(tmp_path / f"{prefix}notapid-00")
    with new_work_folder(tmp_path, prefix) as mine:
        with caplog.at_level(logging.WARNING, logger="ptq_core.work_folders"):
            removed = sweep_stale_work(tmp_path, prefix)
        assert sorted(removed) == sorted([dead, previous_me])
        assert mine.path.is_dir() and alive.is_dir() and all(p.exists() for p in unrelated)
        assert (tmp_path / f"{prefix}1-ab").is_file() and (tmp_path / f"{prefix}2-ab").is_symlink()
        assert re.fullmatch(rf"{re.escape(prefix)}{os.getpid()}-[0-9a-f]{{8}}", mine.path.name)
    assert not mine.path.exists()
    assert len(caplog.messages) == 2


def test_sweep_keeps_a_locked_folder_and_treats_pid_reuse(tmp_path):
    locked = tmp_path / f"job-{dead_pid()}-0000aaaa"  # dead pid, but someone (another namespace?) holds it
    locked.mkdir()
    reused = tmp_path / f"job-{os.getppid()}-0000bbbb"  # a live pid that started long after the folder
    reused.mkdir()
    os.utime(reused, (1_000_000_000, 1_000_000_000))  # 2001
    fd = os.open(locked, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert sweep_stale_work(tmp_path, "job-") == [reused]
    finally:
        os.close(fd)
    assert sweep_stale_work(tmp_path, "job-") == [locked]
    assert sweep_stale_work(tmp_path / "missing", "job-") == []


def test_parent_folders_the_run_created_are_removed_on_failure(src, tmp_path):
    out = tmp_path / "a" / "b" / "out"
    work = prepare_output(src, out, overwrite=False)
    assert work.created_parents == (tmp_path / "a" / "b", tmp_path / "a")
    assert work.path.parent == tmp_path / "a" / "b"
    discard_output(work)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    # a parent that something else started using meanwhile stays
    work = prepare_output(src, out, overwrite=False)
    (tmp_path / "a" / "keep.txt").write_text("someone else's")
    discard_output(work)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["keep.txt"]


def test_published_output_has_no_parents_to_remove(src, tmp_path):
    out = tmp_path / "a" / "out"
    work = prepare_output(src, out, overwrite=False)
    (work / "config.json").write_text("{}")
    publish_output(work, out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    assert work_folders(tmp_path / "a") == []


# --------------------------------------------------------------------------- OS errors


def test_file_size_limit_is_a_disk_space_error(tmp_path):
    """A real EFBIG: the process's file size limit (``ulimit -f``) is below the shard size."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        with pytest.raises(DiskSpaceError, match=r"Could not allocate 4\.19 MB for .*big\.safetensors: File too "
                                                 r"large\. Free some disk space \(or raise the quota or the file size "
                                                 r"limit, `ulimit -f`\)") as info:
            ShardWriter(tmp_path / "big.safetensors", [OutputTensor("w", "F32", (1024, 1024))])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert info.value.errno == errno.EFBIG and isinstance(info.value, OSError)


@pytest.mark.parametrize("code,error,fix", [
    (errno.ENOSPC, DiskSpaceError, "Free some disk space"),
    (errno.EDQUOT, DiskSpaceError, "raise the quota"),
    (errno.EROFS, OutputNotWritableError, "choose a save_directory you can write to"),
    (errno.EACCES, OutputNotWritableError, "not writable by this user"),
])
def test_write_errors_are_typed_and_leave_nothing(src, tmp_path, monkeypatch, code, error, fix):
    def failing_pwrite(fd, data, offset):
        if offset > 0:  # the header goes through; the first tensor does not
            raise OSError(code, os.strerror(code))
        return real_pwrite(fd, data, offset)

    real_pwrite = os.pwrite
    monkeypatch.setattr(os, "pwrite", failing_pwrite)
    out = tmp_path / "out"
    with pytest.raises(error, match=rf"Could not write .*/\.out\.ptq-tmp-\d+-[0-9a-f]+/model\.safetensors: "
                                    rf"{re.escape(os.strerror(code))}\..*{fix}") as info:
        model_free_ptq(src, out, "FP8_BLOCK")
    assert isinstance(info.value, PtqError) and info.value.errno == code
    assert not out.exists() and work_folders(tmp_path) == []


def test_publish_error_is_typed(src, tmp_path, monkeypatch):
    def refuse(src_path, dst_path, flags):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(src_path), None, str(dst_path))

    monkeypatch.setattr(output_folder, "_call_renameat2", refuse)
    with pytest.raises(OutputNotWritableError, match=r"Could not publish the output to .*out: Permission denied"):
        model_free_ptq(src, tmp_path / "out", "FP8_BLOCK")
    assert work_folders(tmp_path) == []


def test_read_only_location(src):
    probe = Path("/sys/ptq-hub-write-probe")
    try:
        os.mkdir(probe)
    except OSError as err:
        assert err.errno in (errno.EPERM, errno.EACCES, errno.EROFS)
    else:
        os.rmdir(probe)
        pytest.skip("/sys is writable here")
    with pytest.raises(OutputNotWritableError, match=r"Could not create /sys/ptq-hub-test: .*choose a "
                                                     "save_directory you can write to"):
        prepare_output(src, Path("/sys/ptq-hub-test/out"), overwrite=False)


def test_output_below_a_file(src, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OutputLocationError, match=r"Could not create .*file/\.out\.ptq-tmp-\d+-[0-9a-f]+: a part of "
                                                  "that path is a file, not a folder"):
        model_free_ptq(src, tmp_path / "file" / "out", "FP8_BLOCK")
    assert (tmp_path / "file").read_text() == "not a folder"


def test_check_free_space(tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    check_free_space(tmp_path / "not" / "yet", 1024)
    with pytest.raises(DiskSpaceError, match=rf"Not enough free disk space in {re.escape(str(tmp_path))}: the "
                                             r"output needs .* only .* is free\. Free some space or choose a "
                                             "save_directory on a larger disk"):
        check_free_space(tmp_path / "not" / "yet", free + (1 << 40))
