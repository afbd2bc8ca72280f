"""Output: streaming safetensors shards, the index, config.json, safe publication.

Every output shard's header is known from the plan before any tensor is
computed, so each shard is created at its final size up front and tensors are
written into place with ``pwrite`` as workers finish them (copied tensors go
through ``copy_file_range``, never through Python memory). Nothing of a shard
is held in memory.

The whole output is built in a hidden sibling work folder,
``.NAME.ptq-tmp-<pid>-<hex>``, and renamed into place at the end, so a crash
never leaves a half checkpoint. Publishing never replaces what the run did not
create: the rename refuses an existing target (``renameat2(RENAME_NOREPLACE)``,
or plain ``rename(2)``, which only ever replaces an *empty* folder), so a file
that appears in the output folder during the run, or the output of a run that
finished first, survives and this run fails with ``OutputExistsError``.
``overwrite=True`` swaps the folders (``RENAME_EXCHANGE``) and deletes the old one.

A work folder is locked (``flock``) for its owner's lifetime and carries its
pid, so the next run can tell a dead run's leftovers from a live run's work
(``sweep_stale_work``); Hub job folders use the same mechanism.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import threading
import weakref
from pathlib import Path
from typing import Callable, Iterable

import torch

from .errors import DiskSpaceError, OutputExistsError, OutputLocationError, OutputNotWritableError, PtqError
from .plan import OutputTensor
from .repo_files import INDEX_NAME
from .sizes import format_bytes
from .sources.safetensors_header import DTYPE_SIZES

logger = logging.getLogger(__name__)

__all__ = [
    "OutputWork",
    "ShardWriter",
    "WorkFolder",
    "check_free_space",
    "copy_extra_files",
    "discard_output",
    "new_work_folder",
    "prepare_output",
    "publish_output",
    "sweep_stale_work",
    "write_config",
    "write_index",
]

_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}


def _output_error(err: OSError, path: Path, action: str) -> Exception:
    """The typed error for an ``OSError`` met while writing the output (or ``err`` itself).

    Args:
        err: what the system call raised.
        path: the file or folder being written (named in the message).
        action: what was being done, e.g. ``"write"``, ``"create"``.
    """
    reason = err.strerror or str(err)
    if err.errno in _DISK_FULL:
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
    if err.errno in _NOT_WRITABLE:
        error = OutputNotWritableError(
            f"Could not {action} {path}: {reason}. The location is read-only or not writable by this user; "
            "choose a save_directory you can write to."
        )
        error.errno = err.errno
        return error
    return err


class ShardWriter:
    """A safetensors file whose layout is fixed at creation; tensors arrive in any order.

    Tensors are laid out like safetensors' own serializer (largest element size
    first, then by name) so every tensor starts aligned to its element size.
    """

    def __init__(self, path: Path, tensors: Iterable[OutputTensor], metadata: dict[str, str] | None = None):
        ordered = sorted(tensors, key=lambda t: (-DTYPE_SIZES[t.dtype], t.name))
        header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
        offset = 0
        self._spans: dict[str, tuple[int, int]] = {}
        self._row_bytes: dict[str, int] = {}
        for t in ordered:
            header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
            self._spans[t.name] = (offset, t.nbytes)
            self._row_bytes[t.name] = t.nbytes // t.shape[0] if t.shape and t.shape[0] else t.nbytes
            offset += t.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * ((-len(raw)) % 8)
        self._data_start = 8 + len(raw)
        self.path = path
        self.size = self._data_start + offset
        self._written: dict[str, int] = {}
        self._lock = threading.Lock()
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as err:
            raise _output_error(err, path, "create") from err
        try:
            os.pwrite(self._fd, len(raw).to_bytes(8, "little") + raw, 0)
            os.ftruncate(self._fd, self.size)
        except OSError as err:
            os.close(self._fd)
            raise _output_error(err, path, f"allocate {format_bytes(self.size)} for") from err

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write a whole tensor (any device; moved to CPU, made contiguous)."""
        self._pwrite(name, 0, tensor, whole=True)

    def write_rows(self, name: str, first_row: int, rows: torch.Tensor) -> None:
        """Write a chunk of consecutive rows of a tensor (streamed quantizer output)."""
        self._pwrite(name, first_row * self._row_bytes[name], rows, whole=False)

    def _pwrite(self, name: str, rel: int, tensor: torch.Tensor, *, whole: bool) -> None:
        start, nbytes = self._spans[name]
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        size = data.numel()
        if (whole and size != nbytes) or rel + size > nbytes:
            raise ValueError(f"{name}: {size} bytes at {rel} do not fit the planned {nbytes}")
        view = memoryview(data.numpy()) if size else memoryview(b"")
        done = 0
        try:
            while done < size:
                done += os.pwrite(self._fd, view[done:], self._data_start + start + rel + done)
        except OSError as err:
            raise _output_error(err, self.path, "write") from err
        self._mark(name, size)

    def copy_from(self, name: str, src_fd: int, src_offset: int) -> None:
        """Copy a tensor's bytes straight from an input shard (kernel-side when possible)."""
        start, nbytes = self._spans[name]
        done = 0
        while done < nbytes:
            try:
                try:
                    n = os.copy_file_range(src_fd, self._fd, nbytes - done, src_offset + done,
                                           self._data_start + start + done)
                except OSError as err:
                    if err.errno in _DISK_FULL or err.errno in _NOT_WRITABLE:
                        raise
                    # cross-filesystem on old kernels, or unsupported: plain copy
                    n = os.pwrite(self._fd, os.pread(src_fd, min(nbytes - done, 64 << 20), src_offset + done),
                                  self._data_start + start + done)
            except OSError as err:
                raise _output_error(err, self.path, "write") from err
            if n <= 0:
                raise OSError(f"short copy for {name}")
            done += n
        self._mark(name, nbytes)

    def _mark(self, name: str, nbytes: int) -> None:
        with self._lock:
            self._written[name] = self._written.get(name, 0) + nbytes

    def close(self) -> None:
        """Close; raises if a planned tensor was never written (a bug, never silent)."""
        try:
            os.close(self._fd)  # NFS and quota file systems report a failed write-back here
        except OSError as err:
            raise _output_error(err, self.path, "write") from err
        missing = [n for n, (_, nbytes) in self._spans.items() if self._written.get(n, 0) != nbytes]
        if missing:
            raise RuntimeError(f"{self.path.name}: tensors not fully written: {sorted(missing)[:5]}")

    def abort(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass


# --- work folders ----------------------------------------------------------
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
        self._finalizer = weakref.finalize(self, _release, path, lock_fd)

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


def _release(path: Path, lock_fd: int | None) -> None:
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
    return WorkFolder(*_create_work_folder(parent, prefix))


def _create_work_folder(parent: Path, prefix: str) -> tuple[Path, int | None]:
    while True:
        path = parent / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"
        _hold(path)  # before it exists: a sweep in another thread must not take it
        try:
            os.mkdir(path)
            break
        except FileExistsError:
            continue
        except OSError as err:
            _release(path, None)
            raise _output_error(err, path, "create") from err
    return path, _lock_folder(path)


def _key(path: Path | str) -> str:
    return os.path.abspath(path)


def _hold(path: Path) -> None:
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


# --- publication -------------------------------------------------------------
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
    src = source.resolve()
    dst = save_directory.resolve()
    if dst == src or src in dst.parents:
        raise OutputLocationError(f"Output folder {save_directory} is the input folder or inside it; choose another.")
    if dst in src.parents:
        raise OutputLocationError(f"Output folder {save_directory} contains the input folder; choose another.")
    if dst.exists():
        if not dst.is_dir():
            raise OutputExistsError(f"{save_directory} exists and is not a folder.")
        if any(dst.iterdir()) and not overwrite:
            raise OutputExistsError(f"{save_directory} is not empty; pass overwrite=True (--overwrite) to replace it.")
    created = _make_parents(dst.parent)
    try:
        prefix = f".{dst.name}.ptq-tmp-"
        sweep_stale_work(dst.parent, prefix)
        path, lock_fd = _create_work_folder(dst.parent, prefix)
    except BaseException:
        _remove_created(created)
        raise
    return OutputWork(path, lock_fd, dst, overwrite, created)


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
            raise _output_error(err, path, "create") from err
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
        raise _output_error(err, dst, "publish the output to") from err
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
    _hold(old)
    try:
        os.rename(dst, old)
        try:
            _rename_noreplace(src, dst)
        except BaseException:
            os.rename(old, dst)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        _release(old, None)


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
    probe = Path(folder).resolve()
    while not probe.exists():
        probe = probe.parent
    usage = os.statvfs(probe)
    free = usage.f_bavail * usage.f_frsize
    if needed_bytes > free:
        error = DiskSpaceError(
            f"Not enough free disk space in {probe}: the output needs {format_bytes(needed_bytes)}, only "
            f"{format_bytes(free)} is free. Free some space or choose a save_directory on a larger disk."
        )
        error.errno = errno.ENOSPC
        raise error


# --- small files -------------------------------------------------------------
def copy_extra_files(source: Path, work: WorkFolder | Path, files: Iterable[str]) -> None:
    """Copy the non-weight files (configs, tokenizer, code, license) into the work folder.

    Raises:
        DiskSpaceError / OutputNotWritableError: the copy could not be written.
    """
    folder = Path(work)
    for rel in files:
        target = folder / rel
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / rel, target)
        except OSError as err:
            raise _output_error(err, target, "write") from err


def write_index(folder: WorkFolder | Path, weight_map: dict[str, str], total_size: int) -> None:
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    _write_text(Path(folder) / INDEX_NAME, json.dumps(index, indent=2) + "\n")


def write_config(folder: WorkFolder | Path, quantization_config: dict | None,
                 update: Callable[[dict], dict] | None = None) -> None:
    """Set ``quantization_config`` in config.json (written like the peer: sorted keys).

    ``None`` removes it: a dequantized copy of a quantized source must not keep the
    source's config, or loaders would expect its packed weights. ``update``: the converter
    chain's ``update_model_config`` hooks (``convert.model_config_update``), applied last.
    """
    path = Path(folder) / "config.json"
    if not path.is_file():
        if quantization_config is not None:
            logger.warning("No config.json in the checkpoint; quantization_config is written to "
                           "quantization_config.json")
            text = json.dumps(quantization_config, indent=2, sort_keys=True)
            _write_text(path.with_name("quantization_config.json"), text)
        return
    data = json.loads(path.read_text())
    changed = quantization_config is not None or update is not None
    if quantization_config is None:
        changed |= data.pop("quantization_config", None) is not None
    else:
        data["quantization_config"] = quantization_config
    if update is not None:
        data = update(data)
    if changed:
        _write_text(path, json.dumps(data, indent=2, sort_keys=True))


def _write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as err:
        raise _output_error(err, path, "write") from err
