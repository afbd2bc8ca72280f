"""output_errors: one OSError -> typed error map for every write of an output."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from ptq_core.errors import DiskSpaceError, OutputLocationError, OutputNotWritableError, PtqError
from ptq_core.output_errors import DISK_FULL, NOT_WRITABLE, output_error

PATH = Path("/out/model.safetensors")


@pytest.mark.parametrize("code", sorted(DISK_FULL))
def test_a_full_disk_or_quota_is_a_disk_space_error_with_the_fix(code):
    error = output_error(OSError(code, "No space"), PATH, "write")
    assert isinstance(error, DiskSpaceError) and isinstance(error, PtqError) and error.errno == code
    assert str(error).startswith(f"Could not write {PATH}: No space. Free some disk space")


@pytest.mark.parametrize("code", sorted(NOT_WRITABLE))
def test_a_read_only_location_is_not_writable(code):
    error = output_error(OSError(code, "Read-only"), PATH, "create")
    assert isinstance(error, OutputNotWritableError) and error.errno == code
    assert "choose a save_directory you can write to" in str(error) and str(error).startswith("Could not create")


def test_a_file_in_the_path_is_a_location_error():
    error = output_error(OSError(errno.ENOTDIR, "Not a directory"), PATH, "create")
    assert isinstance(error, OutputLocationError) and "a part of that path is a file" in str(error)


def test_other_errors_are_returned_unchanged():
    err = OSError(errno.EIO, "I/O error")
    assert output_error(err, PATH, "write") is err
