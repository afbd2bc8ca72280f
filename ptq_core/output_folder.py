"""An output folder published safely: built aside, renamed into place, never replacing what the run did not create.

The whole output is built in a hidden sibling work folder,
``.NAME.ptq-tmp-<pid>-<hex>``, and renamed into place at the end, so a crash
never leaves a half checkpoint. Publishing never replaces what the run did not
create: the rename refuses an existing target (``renameat2(RENAME_NOREPLACE)``,
or plain ``rename(2)``, which only ever replaces an *empty* folder), so a file
that appears in the output folder during the run, or the output of a run that
finished first, survives and this run fails with ``OutputExistsError``.
``overwrite=True`` swaps the folders (``RENAME_EXCHANGE``) and deletes the old one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import secrets
import shutil
from pathlib import Path

from .errors import DiskSpaceError, OutputExistsError, OutputLocationError, PtqError
from .output_errors import output_error
from .sizes import format_bytes
from .work_folders import WorkFolder, create_work_folder, hold_path, release_path, sweep_stale_work

logger = logging.getLogger(__name__)

__all__ = [
    "OutputWork",
    "check_free_space",
    "check_output",
    "discard_output",
    "existing_ancestor",
    "prepare_output",
    "publish_output",
]


class OutputWork(WorkFolder):
    """The work folder of one run, with what ``publish_output``/``discard_output`` need.

    Attributes:
        path: the hidden work folder ``.NAME.ptq-tmp-<pid>-<hex>`` next to the target.
        save_directory: the absolute target folder.
        overwrite: whether publishing may replace a non-empty target.
        created_parents: folders ``prepare_output`` created for the target, deepest first.
    """

    def __init__(self, path: Path, lock_fd: int | None, save_directory: Path, overwrite: bool,
                 created_parents: tuple[Path, ...]) -> None:
        super().__init__(path, lock_fd)
        self.save_directory = save_directory
        self.overwrite = overwrite
        self.created_parents = created_parents


def prepare_output(source: Path, save_directory: Path, *, overwrite: bool) -> OutputWork:
    """Check the target, remove dead runs' work folders, and hold a fresh one next to it.

    Raises:
        OutputLocationError: the target is the source, inside it, or contains it.
        OutputExistsError: the target is a file, or holds files and ``overwrite`` is False.
        OutputNotWritableError: the target's parent cannot be created or written.
        DiskSpaceError: the disk is full.
    """
    check_output(save_directory, overwrite=overwrite, source=source)
    dst = save_directory.resolve()
    created = _make_parents(dst.parent)
    try:
        prefix = f".{dst.name}.ptq-tmp-"
        sweep_stale_work(dst.parent, prefix)
        path, lock_fd = create_work_folder(dst.parent, prefix)
    except BaseException:
        _remove_created(created)
        raise
    return OutputWork(path, lock_fd, dst, overwrite, created)


def check_output(save_directory: Path, *, overwrite: bool, source: Path | None = None) -> None:
    """``prepare_output``'s checks of the target, nothing created (several outputs are checked before any is).

    Raises:
        OutputLocationError: the target is ``source``, inside it, or contains it.
        OutputExistsError: the target is a file, or holds files and ``overwrite`` is False.
    """
    dst = Path(save_directory).resolve()
    if source is not None:
        src = source.resolve()
        if dst == src or src in dst.parents:
            raise OutputLocationError(f"Output folder {save_directory} is the input folder or inside it; choose another.")
        if dst in src.parents:
            raise OutputLocationError(f"Output folder {save_directory} contains the input folder; choose another.")
    if dst.exists():
        if not dst.is_dir():
            raise OutputExistsError(f"{save_directory} exists and is not a folder.")
        if any(dst.iterdir()) and not overwrite:
            raise OutputExistsError(f"{save_directory} is not empty; pass overwrite=True (--overwrite) to replace it.")


def _make_parents(folder: Path) -> tuple[Path, ...]:
    """Create ``folder`` and its missing ancestors; return those this call created, deepest first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    created = []
    for path in reversed(missing):
        try:
            os.mkdir(path)
        except FileExistsError:
            continue  # another process made it: not ours to remove
        except OSError as err:
            _remove_created(tuple(reversed(created)))
            raise output_error(err, path, "create") from err
        created.append(path)
    return tuple(reversed(created))


def _remove_created(created: tuple[Path, ...]) -> None:
    for path in created:
        try:
            os.rmdir(path)
        except OSError:
            return  # not empty any more: something else uses it now


def discard_output(work: OutputWork) -> None:
    """After a failed run: delete the work folder and the parent folders the run created."""
    work.remove()
    _remove_created(work.created_parents)


def publish_output(work: OutputWork, save_directory: str | os.PathLike[str] | None = None) -> None:
    """Move the finished work folder to the target without replacing anything it did not create.

    Without ``overwrite``, an empty target folder is replaced only if it is still empty
    at this moment; anything else at the target is left exactly as it is.

    Args:
        work: from ``prepare_output``.
        save_directory: optional; if given, the folder passed to ``prepare_output``.

    Raises:
        OutputExistsError: something appeared at the target during the run (another run's
            output, a file), and ``overwrite`` was not given; the work folder is kept for
            the caller to discard.
        OutputNotWritableError / DiskSpaceError: the rename failed for those reasons.
    """
    dst = work.save_directory
    if save_directory is not None and Path(save_directory).resolve() != dst:
        raise ValueError(f"publish_output: {save_directory} is not the folder prepared ({dst}).")
    try:
        if work.overwrite:
            _publish_replacing(work.path, dst)
        else:
            _publish_new(work.path, dst)
    except PtqError:
        raise
    except OSError as err:
        raise output_error(err, dst, "publish the output to") from err
    work.release()
    logger.info("Published %s", dst)


def _publish_new(src: Path, dst: Path) -> None:
    try:
        _rename_noreplace(src, dst)
        return
    except FileExistsError:
        pass
    try:
        os.rmdir(dst)  # refuses, atomically, unless the folder is still empty
    except OSError as err:
        if err.errno == errno.ENOTDIR:
            raise OutputExistsError(
                f"{dst} appeared during the run and is not a folder; it was left as it is."
            ) from err
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise OutputExistsError(_appeared(dst)) from err
        raise
    try:
        _rename_noreplace(src, dst)
    except FileExistsError as err:
        raise OutputExistsError(_appeared(dst)) from err
    except OSError:
        with contextlib.suppress(OSError):
            os.mkdir(dst)  # give the caller back the empty folder it had
        raise


def _appeared(dst: Path) -> str:
    try:
        names = sorted(p.name for p in dst.iterdir())
    except OSError:
        names = []
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (f"{dst} received files during the run ({shown or 'another output'}); they were left as they are. "
            "Another run may be writing there: choose another save_directory, or pass overwrite=True to replace it.")


def _publish_replacing(src: Path, dst: Path) -> None:
    try:
        _rename_noreplace(src, dst)
        return
    except FileExistsError:
        pass
    if dst.is_symlink() or not dst.is_dir():
        raise OutputExistsError(f"{dst} exists and is not a folder; it was left as it is.")
    if _call_renameat2(src, dst, _RENAME_EXCHANGE):
        shutil.rmtree(src, ignore_errors=True)  # the previous output; if this fails, the next sweep removes it
        return
    # No exchange here: move the old output aside under a work-folder name (swept if we die).
    old = dst.parent / f".{dst.name}.ptq-tmp-{os.getpid()}-{secrets.token_hex(4)}"
    hold_path(old)
    try:
        os.rename(dst, old)
        try:
            _rename_noreplace(src, dst)
        except BaseException:
            os.rename(old, dst)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        release_path(old)


# renameat2(2) flags (linux/fs.h); glibc >= 2.28 exports the call.
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}
try:
    _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    _renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
except (AttributeError, OSError):  # not Linux/glibc: the fallbacks below
    _renameat2 = None


def _call_renameat2(src: Path, dst: Path, flags: int) -> bool:
    """True if done, False if this system or file system lacks the flag; raises other errors."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(src), None, str(dst))


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Rename a folder onto a name that must not exist; FileExistsError if it does."""
    try:
        if _call_renameat2(src, dst, _RENAME_NOREPLACE):
            return
        # Fallback: rename(2) of a folder replaces only an empty folder (ENOTEMPTY, EEXIST or
        # ENOTDIR otherwise), so between this check and the rename, at worst an empty folder
        # that appeared is replaced; never a file and never a folder's contents.
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
        os.rename(src, dst)
    except OSError as err:
        if err.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR) and not isinstance(err, FileExistsError):
            raise FileExistsError(err.errno, err.strerror, str(dst)) from err
        raise


def existing_ancestor(folder: Path) -> Path:
    """``folder`` resolved, or its nearest existing ancestor: where an output not yet made will be."""
    probe = Path(folder).resolve()
    while not probe.exists():
        probe = probe.parent
    return probe


def check_free_space(folder: Path, needed_bytes: int) -> None:
    """Refuse a run whose output cannot fit, before a byte of it is written.

    Args:
        folder: where the output goes (it, or its nearest existing ancestor, is measured).
        needed_bytes: the plan's exact output size.

    Raises:
        DiskSpaceError: fewer than ``needed_bytes`` are free for this user.

    Example:
        >>> check_free_space(Path("out"), plan.size_after)  # doctest: +SKIP
    """
    probe = existing_ancestor(folder)
    usage = os.statvfs(probe)
    free = usage.f_bavail * usage.f_frsize
    if needed_bytes > free:
        error = DiskSpaceError(
            f"Not enough free disk space in {probe}: the output needs {format_bytes(needed_bytes)}, only "
            f"{format_bytes(free)} is free. Free some space or choose a save_directory on a larger disk."
        )
        error.errno = errno.ENOSPC
        raise error
