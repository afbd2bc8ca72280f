"""The typed error for an ``OSError`` met while writing an output: disk full, read-only, a file in the way.

One mapper for the shard writer, the work folders and publication, so that the same
system error gives the same ptq-hub error (and the same next step) wherever it is met.
"""

from __future__ import annotations

import errno
from pathlib import Path

from .errors import DiskSpaceError, OutputLocationError, OutputNotWritableError

__all__ = ["DISK_FULL", "NOT_WRITABLE", "output_error"]

DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}


def output_error(err: OSError, path: Path, action: str) -> Exception:
    """The typed error for an ``OSError`` met while writing the output (or ``err`` itself).

    Args:
        err: what the system call raised.
        path: the file or folder being written (named in the message).
        action: what was being done, e.g. ``"write"``, ``"create"``.
    """
    reason = err.strerror or str(err)
    if err.errno in DISK_FULL:
        error: Exception = DiskSpaceError(
            f"Could not {action} {path}: {reason}. Free some disk space (or raise the quota or the file size limit, "
            "`ulimit -f`) or choose a save_directory on another disk."
        )
        error.errno = err.errno
        return error
    if err.errno == errno.ENOTDIR:
        return OutputLocationError(
            f"Could not {action} {path}: a part of that path is a file, not a folder; choose another save_directory."
        )
    if err.errno in NOT_WRITABLE:
        error = OutputNotWritableError(
            f"Could not {action} {path}: {reason}. The location is read-only or not writable by this user; "
            "choose a save_directory you can write to."
        )
        error.errno = err.errno
        return error
    return err
