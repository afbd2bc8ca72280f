"""Output shard by output shard through a bounded local folder: read ahead, quantize, upload, overlapped.

Three stages run at once, joined by bounded hand-offs:

* **read**: the reader (``remote.RemoteReader``) fetches the byte ranges of the
  work units ahead of the workers, within its byte window;
* **quantize**: the dispatcher (:func:`stream_shards`) hands the units, in order, to
  the one executor of work units (``units.UnitExecutor``: ``workers`` threads, at
  most two units per worker queued), each writing into its output shard
  (``writer.ShardWriter``); it opens an output shard only when the
  :class:`DiskGate` admits it: it fits the **disk budget** next to the shards
  still on disk (and at most ``parts.LOCAL_SHARDS`` of them);
* **upload**: the :class:`Uploader`'s ``UPLOAD_THREADS`` threads hand finished
  shards, taken in order, to ``upload`` (which returns once the bytes are safe on
  the Hub), delete each local file, and release its room at the gate.

The first failure of any of them (``units.FirstFailure``) stops all three.

So on a bandwidth-limited link the wall time approaches the slowest stage, and
the local disk never holds more than the budget, whatever the model's size.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import Checkpoint
from .errors import DiskSpaceError
from .parts import LOCAL_SHARDS, shard_sizes
from .plan import Plan, PlannedWeight
from .sizes import format_bytes
from .source import ProgressCallback
from .units import FirstFailure, TensorReader, UnitExecutor, process_unit, torch_threads, unit_reads, work_units
from .writer import ShardWriter

logger = logging.getLogger(__name__)

__all__ = ["DiskGate", "ReaderFactory", "StreamReport", "Uploader", "stream_reads", "stream_shards"]

ReaderFactory = Callable[[list[list[tuple[str, int, int]]]], AbstractContextManager[TensorReader]]
"""Opens a reader for the units' input ranges, in the order the workers will take them."""

_TICK_SECONDS = 1.0  # how often a waiting uploader calls ``tick`` (commits that fell due)
UPLOAD_THREADS = 2
"""Shards uploaded at once: one is hashed and announced while the other's bytes travel."""


@dataclass(frozen=True)
class StreamReport:
    """What a stream did: output shards uploaded, and the most local disk its shards held at once."""

    shards: tuple[str, ...]
    peak_disk: int


class DiskGate:
    """The bytes and number of output shards on local disk, bounded: admit, hold, release, peak.

    A shard is admitted when it fits the budget next to those on disk and fewer than
    ``max_shards`` are there; the first is always admitted (the plan refused a shard
    larger than the budget up front). Only the dispatcher admits; uploaders release.
    """

    def __init__(self, budget: int, max_shards: int, failure: FirstFailure) -> None:
        self.budget = budget
        self.max_shards = max_shards
        self._failure = failure
        self._cond = failure.watch(threading.Condition())
        self.bytes = 0
        self.shards = 0
        self.peak = 0

    def admit(self, needed: int) -> bool:
        """Wait until ``needed`` more bytes fit; ``False`` when a failure stopped the job meanwhile."""
        with self._cond:
            while self._failure.error is None and self.shards and (
                self.shards >= self.max_shards or self.bytes + needed > self.budget
            ):
                self._cond.wait()
            return self._failure.error is None

    def hold(self, nbytes: int) -> None:
        """A shard of ``nbytes`` is now on disk."""
        with self._cond:
            self.bytes += nbytes
            self.shards += 1
            self.peak = max(self.peak, self.bytes)

    def release(self, nbytes: int) -> None:
        """A shard of ``nbytes`` left the disk: wake the dispatcher."""
        with self._cond:
            self.bytes -= nbytes
            self.shards -= 1
            self._cond.notify_all()


class Uploader:
    """Threads that upload finished shards in order, delete each, and release its room at the gate.

    Several threads overlap one shard's hashing with another's transfer. ``tick`` is
    called between shards and about every second while a thread waits for its shard.
    ``keep``: the shards are the output itself (a local folder, ``pipeline_many``), so
    they stay where they are; the gate still frees their room, as the disk was checked for them.
    """

    def __init__(
        self, shards: Sequence[str], folder: Path, upload: Callable[[str, Path], None], tick: Callable[[], None], *,
        gate: DiskGate, failure: FirstFailure, progress: ProgressCallback, total: int, keep: bool = False,
    ) -> None:
        self._keep = keep
        self._shards = list(shards)
        self._folder = folder
        self._upload = upload
        self._tick = tick
        self._gate = gate
        self._failure = failure
        self._progress = progress
        self._total = total  # estimated from the plan (headers generously): the last shard completes it
        self._cond = failure.watch(threading.Condition())
        self._ready: dict[str, int] = {}  # finished shard -> bytes on disk
        self._next = 0
        self._uploaded = 0
        self._bytes = 0
        self._threads: list[threading.Thread] = []

    def start(self, threads: int | None = None) -> None:
        """Start ``threads`` upload threads (default ``UPLOAD_THREADS``, read now), at most one per shard."""
        count = UPLOAD_THREADS if threads is None else threads
        self._threads = [threading.Thread(target=self._loop, name=f"ptq-upload-{i}", daemon=True)
                         for i in range(min(count, len(self._shards)))]
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        for thread in self._threads:
            thread.join()

    def ready(self, shard: str, nbytes: int) -> None:
        """``shard`` (``nbytes`` on disk) is written and closed: it may be uploaded."""
        with self._cond:
            self._ready[shard] = nbytes
            self._cond.notify_all()

    def _take(self) -> tuple[str, int] | None:
        """The next shard in order, once it is ready; ``None`` when none is left or the job failed."""
        with self._cond:
            if self._next == len(self._shards) or self._failure.error is not None:
                return None
            shard = self._shards[self._next]
            self._next += 1
            while shard not in self._ready and self._failure.error is None:
                self._cond.wait(_TICK_SECONDS)
                if shard not in self._ready and self._failure.error is None:
                    self._cond.release()
                    try:
                        self._tick()
                    finally:
                        self._cond.acquire()
            return None if self._failure.error is not None else (shard, self._ready[shard])

    def _loop(self) -> None:
        try:
            while (taken := self._take()) is not None:
                shard, size = taken
                path = self._folder / shard
                self._upload(shard, path)
                if not self._keep:
                    path.unlink()
                self._gate.release(size)
                with self._cond:
                    self._uploaded += 1
                    self._bytes += size
                    done = self._total if self._uploaded == len(self._shards) else min(self._bytes, self._total)
                self._progress("upload", done, self._total)
                self._tick()
        except BaseException as err:  # noqa: BLE001 - the dispatcher raises the first failure
            self._failure.set(err)


class _Shards:
    """The output shards being written: their writers, units left, and progress of ``quantize`` and ``write``."""

    def __init__(self, plan: Plan, folder: Path, units: list[tuple[str, list[PlannedWeight]]], shards: int,
                 progress: ProgressCallback) -> None:
        self._plan = plan
        self._folder = folder
        self._left = Counter(shard for shard, _ in units)
        self._units = len(units)
        self._shards = shards
        self._progress = progress
        self._lock = threading.Lock()
        self._done_units = 0
        self.writers: dict[str, ShardWriter] = {}
        self.closed: list[str] = []

    def open(self, shard: str) -> ShardWriter:
        try:
            writer = ShardWriter(self._folder / shard, self._plan.shard_outputs(shard))
        except OSError as err:
            raise _disk_error(err, self._folder, shard) from err
        self.writers[shard] = writer
        return writer

    def unit_done(self, shard: str) -> bool:
        """Count one finished unit of ``shard``; ``True`` when it was the shard's last."""
        with self._lock:
            self._done_units += 1
            self._left[shard] -= 1
            done, last = self._done_units, self._left[shard] == 0
        self._progress("quantize", done, self._units)
        return last

    def close(self, shard: str) -> int:
        """Finish ``shard``'s file; its size on disk."""
        writer = self.writers[shard]
        try:
            writer.close()
        except OSError as err:
            raise _disk_error(err, self._folder, shard) from err
        with self._lock:
            self.closed.append(shard)
            closed = len(self.closed)
        self._progress("write", closed, self._shards)
        return writer.size

    def abort_open(self) -> None:
        for shard, writer in self.writers.items():
            if shard not in self.closed:
                writer.abort()


def stream_shards(
    plan: Plan,
    checkpoint: Checkpoint,
    shards: Sequence[str],
    open_reader: ReaderFactory,
    folder: Path,
    *,
    upload: Callable[[str, Path], None],
    tick: Callable[[], None],
    disk_budget: int,
    devices: Sequence[torch.device],
    workers: int,
    progress: ProgressCallback,
) -> StreamReport:
    """Quantize the output ``shards`` of ``plan`` one after another into ``folder`` and upload each.

    The dispatcher: units in shard order to the executor, each shard opened when the
    disk gate admits it, each finished shard handed to the uploader.

    Args:
        open_reader: builds the reader for the units' input ranges (see ``ReaderFactory``).
        upload: ``upload(shard, path)``, returning once the shard is safe on the Hub.
        tick: called by the uploaders between shards and about every second while they wait.
        disk_budget: bytes of output shards that may sit in ``folder`` at once.
        progress: stages ``quantize`` (units), ``write`` (shards finished), ``upload`` (bytes).

    Returns:
        a :class:`StreamReport`. The folder holds no shard afterwards.

    Raises:
        whatever a stage raised first (the others stop); ``DiskSpaceError`` when the
        disk fills up below the budget (another process took the space).
    """
    units = _units(plan, checkpoint, shards)
    expected = shard_sizes(plan)
    failure = FirstFailure()
    gate = DiskGate(disk_budget, LOCAL_SHARDS, failure)
    uploader = Uploader(shards, folder, upload, tick, gate=gate, failure=failure, progress=progress,
                        total=sum(expected[s] for s in shards))
    local = _Shards(plan, folder, units, len(shards), progress)

    with open_reader([unit_reads(checkpoint, unit) for _, unit in units]) as reader:
        progress("quantize", 0, len(units))
        progress("write", 0, len(shards))

        def run(work: tuple[str, list[PlannedWeight]], device: torch.device) -> None:
            shard, unit = work
            try:
                process_unit(plan, unit, reader, local.writers, device)
            except OSError as err:
                raise _disk_error(err, folder, shard) from err
            if local.unit_done(shard):
                uploader.ready(shard, local.close(shard))

        uploader.start()
        try:
            with torch_threads(workers), UnitExecutor(run, workers=workers, devices=devices, failure=failure) as pool:
                for shard, unit in units:
                    if shard not in local.writers and not _admit(gate, local, shard, expected[shard]):
                        break
                    if not pool.submit((shard, unit)):
                        break
        except BaseException as err:
            failure.set(err)
        finally:
            uploader.join()
            local.abort_open()
    failure.raise_if_set()
    return StreamReport(shards=tuple(shards), peak_disk=gate.peak)


def stream_reads(plan: Plan, checkpoint: Checkpoint, shards: Sequence[str]) -> list[list[tuple[str, int, int]]]:
    """The input ranges ``stream_shards`` gives ``open_reader`` for ``shards``: a caller may read them early."""
    return [unit_reads(checkpoint, unit) for _, unit in _units(plan, checkpoint, shards)]


def _units(plan: Plan, checkpoint: Checkpoint, shards: Sequence[str]) -> list[tuple[str, list[PlannedWeight]]]:
    """The work units of ``shards``, in the order the dispatcher hands them out."""
    return [(shard, unit) for shard in shards for unit in work_units(plan, checkpoint, shard=shard)]


def _admit(gate: DiskGate, local: _Shards, shard: str, needed: int) -> bool:
    """Open ``shard`` once the gate has room for it; ``False`` when the job failed meanwhile."""
    if not gate.admit(needed):
        return False
    gate.hold(local.open(shard).size)
    logger.debug("Writing %s (%s; %s of output shards on disk)", shard, format_bytes(local.writers[shard].size),
                 format_bytes(gate.bytes))
    return True


def _disk_error(err: OSError, folder: Path, shard: str) -> OSError:
    """A full disk becomes a ``DiskSpaceError`` that says what to do; other I/O errors stay as they are."""
    if err.errno not in (errno.ENOSPC, errno.EDQUOT):
        return err
    return DiskSpaceError(
        f"The disk of {folder} filled up while writing output shard {shard} ({err.strerror or os.strerror(err.errno)}): "
        "something else "
        "took the space the disk budget counted on. Free some space or lower disk_budget (--disk-budget), "
        "then rerun: shards already staged are not redone."
    )
