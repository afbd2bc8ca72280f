"""work_folders: ``{prefix}{pid}-{hex}`` folders held with flock, and a sweep that takes only dead runs' folders."""

from __future__ import annotations

import fcntl
import os
import re
import subprocess

import pytest

from ptq_core.errors import OutputLocationError
from ptq_core.work_folders import create_work_folder, hold_path, new_work_folder, release_path, sweep_stale_work


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_new_folder_is_named_by_pid_locked_and_usable_as_a_path(tmp_path):
    work = new_work_folder(tmp_path, "job-")
    assert re.fullmatch(rf"job-{os.getpid()}-[0-9a-f]{{8}}", work.path.name) and work.path.is_dir()
    assert os.fspath(work) == str(work.path) and work / "x" == work.path / "x"
    fd = os.open(work.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(BlockingIOError):  # another holder cannot take it while we hold it
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        work.release()
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released: now it can
    finally:
        os.close(fd)
    assert work.path.is_dir()  # release keeps the folder


def test_our_own_sweep_skips_what_we_hold_and_takes_what_we_released(tmp_path):
    held = new_work_folder(tmp_path, "job-")
    released = new_work_folder(tmp_path, "job-")
    released.release()
    assert sweep_stale_work(tmp_path, "job-") == [released.path]
    assert held.path.is_dir() and not released.path.exists()
    held.remove()
    held.remove()  # idempotent
    assert not held.path.exists()


def test_a_dead_pid_s_folder_is_removed_and_a_live_one_kept(tmp_path):
    dead = tmp_path / f"out-{_dead_pid()}-0a1b2c3d"
    alive = tmp_path / f"out-{os.getppid()}-0a1b2c3d"
    other_prefix = tmp_path / f"job-{_dead_pid()}-0a1b2c3d"
    for folder in (dead, alive, other_prefix):
        folder.mkdir()
    assert sweep_stale_work(tmp_path, "out-") == [dead]
    assert alive.is_dir() and other_prefix.is_dir()
    assert sweep_stale_work(tmp_path / "missing", "out-") == []


def test_a_held_path_is_skipped_until_released(tmp_path):
    path = tmp_path / f"job-{os.getpid()}-00000000"
    path.mkdir()
    hold_path(path)
    assert sweep_stale_work(tmp_path, "job-") == []
    release_path(path)
    assert sweep_stale_work(tmp_path, "job-") == [path]


def test_the_context_manager_removes_the_folder(tmp_path):
    with new_work_folder(tmp_path, "job-") as work:
        (work / "shard").write_bytes(b"x")
    assert not work.path.exists()


def test_a_parent_that_is_a_file_is_a_typed_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputLocationError, match="a part of that path is a file"):
        create_work_folder(tmp_path / "file", "job-")
