"""Work folders a later run can tell from a live one's: ``{prefix}{pid}-{hex}``, locked while held.

A work folder is locked (``flock``) for its owner's lifetime and carries its pid, so the
next run can tell a dead run's leftovers from a live run's work (``sweep_stale_work``).
The output's hidden ``.NAME.ptq-tmp-*`` folder (``output_folder.py``) and the Hub job's
``ptq-job-*`` folders use this one mechanism.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import secrets
import shutil
import threading
import weakref
from pathlib import Path

from .output_errors import output_error

logger = logging.getLogger(__name__)

__all__ = [
    "WorkFolder",
    "create_work_folder",
    "hold_path",
    "new_work_folder",
    "release_path",
    "sweep_stale_work",
]

_live_lock = threading.Lock()
_live: set[str] = set()  # work folders this process holds, so its own sweeps skip them
_CLOCK_SLACK = 60.0  # seconds; wall-clock steps (NTP) must not make a live owner look newer


class WorkFolder:
    """A hidden folder ``{prefix}{pid}-{hex}`` that this process holds until it is released.

    It is locked with ``flock`` for as long as it is held, so a later run can tell
    (``sweep_stale_work``) that its owner is alive even across pid namespaces, and
    ``os.fspath(work)`` / ``work / "file"`` use it as a folder. ``release()`` (or
    garbage collection) drops the lock; ``remove()`` deletes the folder first.
    """

    def __init__(self, path: Path, lock_fd: int | None) -> None:
        self.path = path
        self._finalizer = weakref.finalize(self, release_path, path, lock_fd)

    def __fspath__(self) -> str:
        return str(self.path)

    def __truediv__(self, other: str | os.PathLike[str]) -> Path:
        return self.path / other

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def release(self) -> None:
        """Stop holding the folder (it stays on disk); idempotent."""
        self._finalizer()

    def remove(self) -> None:
        """Delete the folder and release it; idempotent, never raises for a missing folder."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.release()

    def __enter__(self) -> "WorkFolder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def release_path(path: Path, lock_fd: int | None = None) -> None:
    """Stop holding ``path`` (see ``hold_path``) and close its lock, if any."""
    with _live_lock:
        _live.discard(_key(path))
    if lock_fd is not None:
        os.close(lock_fd)


def new_work_folder(parent: Path, prefix: str) -> WorkFolder:
    """Create and hold ``parent/{prefix}{pid}-{hex}``.

    Args:
        parent: an existing folder.
        prefix: the folder kind, e.g. ``".out.ptq-tmp-"`` (output) or ``"job-"`` (Hub job).

    Raises:
        DiskSpaceError / OutputNotWritableError: ``parent`` is full or not writable.

    Example:
        >>> with new_work_folder(Path(cache), "job-") as job:  # doctest: +SKIP
        ...     download_into(job / "source")
    """
    return WorkFolder(*create_work_folder(parent, prefix))


def create_work_folder(parent: Path, prefix: str) -> tuple[Path, int | None]:
    """Create and hold ``parent/{prefix}{pid}-{hex}``: (its path, the fd holding its lock or None)."""
    while True:
        path = parent / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"
        hold_path(path)  # before it exists: a sweep in another thread must not take it
        try:
            os.mkdir(path)
            break
        except FileExistsError:
            continue
        except OSError as err:
            release_path(path)
            raise output_error(err, path, "create") from err
    return path, _lock_folder(path)


def _key(path: Path | str) -> str:
    return os.path.abspath(path)


def hold_path(path: Path) -> None:
    """Mark ``path`` as this process's, so that its own sweeps skip it (until ``release_path``)."""
    with _live_lock:
        _live.add(_key(path))


def _lock_folder(path: Path) -> int | None:
    """An fd holding ``flock(LOCK_EX)`` on the folder, or None where the file system has no locks.

    Blocking: a sweep in another process may hold the lock for the moment it takes to
    see that our pid is alive.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:  # ENOLCK, EOPNOTSUPP (some network file systems): the pid alone tells
        os.close(fd)
        return None
    return fd


def sweep_stale_work(parent: Path, prefix: str) -> list[Path]:
    """Remove the ``{prefix}{pid}-{hex}`` folders in ``parent`` whose owner is gone; log each.

    A folder is stale when nobody holds its lock and its process is not running: the
    pid is dead (or a zombie), or the pid is ours but the folder is not one we hold
    (a previous process that had our pid, as in a restarted container), or the live
    process with that pid started after the folder last changed (the pid was reused).
    When in doubt (no ``/proc``, a lock held, another user's process) it is kept.

    Args:
        parent: the folder to look in (a missing folder gives ``[]``).
        prefix: as given to ``new_work_folder``.

    Returns:
        The folders removed.
    """
    pattern = re.compile(re.escape(prefix) + r"(\d+)-[0-9a-f]+")
    removed = []
    try:
        entries = list(os.scandir(parent))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        pid = int(match.group(1))
        path = Path(entry.path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    continue  # its owner is alive, maybe in another pid namespace
            if not _owner_is_gone(pid, path, os.fstat(fd).st_mtime):
                continue
            shutil.rmtree(path, ignore_errors=True)
            if not os.path.lexists(path):
                logger.warning("Removed %s: left behind by process %d, which is no longer running.", path, pid)
                removed.append(path)
        finally:
            os.close(fd)
    return removed


def _owner_is_gone(pid: int, path: Path, mtime: float) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        with _live_lock:
            return _key(path) not in _live
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    except OSError:
        return False
    state, started = _process_state(pid)
    if state in ("Z", "X"):  # exited, not yet reaped: it will write nothing more
        return True
    # The owner made the folder after it started; a process that started later reused the pid.
    return started is not None and started > mtime + _CLOCK_SLACK


def _process_state(pid: int) -> tuple[str | None, float | None]:
    """(state letter, start time as a Unix time) of a process, from /proc; Nones elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
        fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and ")"
        return fields[0], int(boot.split()[1]) + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None, None
