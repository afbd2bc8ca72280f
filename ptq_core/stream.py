"""Output shard by output shard through a bounded local folder: read ahead, quantize, upload, overlapped.

Three stages run at once, joined by bounded hand-offs:

* **read**: the reader (``remote.RemoteReader``) fetches the byte ranges of the
  work units ahead of the workers, within its byte window;
* **quantize**: the dispatcher (:func:`stream_units`) hands the units, in order, to
  the one executor of work units (``units.UnitExecutor``: ``workers`` threads, at
  most two units per worker queued), each writing into its output shard
  (``writer.ShardWriter``); it opens an output shard only when the
  :class:`DiskGate` admits it: it fits the **disk budget** next to the shards
  still on disk (and at most ``parts.LOCAL_SHARDS`` of them);
* **upload**: the :class:`Uploader`'s ``UPLOAD_THREADS`` threads hand finished
  shards, taken in order, to ``upload`` (which returns once the bytes are safe on
  the Hub), delete each local file, and release its room at the gate.

The first failure of any of them (``units.FirstFailure``) stops all three.
:func:`stream_shards` streams one scheme; ``fanout.fan_out_shards`` several from one
read, through the same dispatcher (each scheme its own gate and uploader).

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
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import Checkpoint, TensorInfo
from .errors import DiskSpaceError
from .parts import LOCAL_SHARDS, shard_sizes
from .plan import Plan, PlannedWeight
from .sizes import format_bytes
from .source import ProgressCallback
from .units import FirstFailure, TensorReader, UnitExecutor, process_unit, torch_threads, unit_reads, work_units
from .writer import ShardWriter

logger = logging.getLogger(__name__)

__all__ = [
    "DiskGate", "FanOutTarget", "JointUnit", "Member", "Read", "ReaderFactory", "StreamReport", "Uploader",
    "stream_reads", "stream_shards", "stream_units",
]

Read = tuple[str, int, int]
"""An input range: (input shard, absolute offset, nbytes)."""
ReaderFactory = Callable[[list[list[Read]]], AbstractContextManager[TensorReader]]
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


@dataclass
class FanOutTarget:
    """One target of a stream: its plan, the output shards to make (uploaded in this order), where they go.

    ``upload``, ``tick``, ``progress`` and ``disk_budget`` mean what they mean for
    :func:`stream_shards`; ``folder`` is this target's own (shard names repeat across targets).
    A single-scheme stream has one target; ``fanout.fan_out_shards`` several, from one read.
    ``keep``: the shards are this target's output (a local folder, ``pipeline_many``):
    ``upload`` is told of each, none is deleted (:class:`Uploader`'s ``keep``).
    """

    plan: Plan
    shards: Sequence[str]
    folder: Path
    upload: Callable[[str, Path], None]
    tick: Callable[[], None]
    disk_budget: int
    progress: ProgressCallback
    keep: bool = False


@dataclass(frozen=True)
class Member:
    """One target's work unit inside a :class:`JointUnit`, with the input ranges it reads."""

    target: int
    shard: str
    unit: list[PlannedWeight]
    reads: tuple[Read, ...]


@dataclass
class JointUnit:
    """The units of every target that read a common input range, and their reads, each range once."""

    reads: list[Read]
    members: list[Member] = field(default_factory=list)


class _UnitBytes:
    """A joint unit's input bytes, copied out of the shared reader once, served to each member."""

    def __init__(self, reader: TensorReader, reads: Sequence[Read]) -> None:
        self.checkpoint = reader.checkpoint
        self._data: dict[tuple[str, int], torch.Tensor] = {}
        for shard, offset, nbytes in reads:
            buffer = torch.empty(nbytes, dtype=torch.uint8)
            reader.read_into(TensorInfo("", shard, "U8", (nbytes,), offset, nbytes), buffer)
            self._data[(shard, offset)] = buffer

    def view(self, member: Member) -> _MemberReader:
        return _MemberReader(self, {(s, o): n for s, o, n in member.reads})


class _MemberReader:
    """The ``units.TensorReader`` one member's ``process_unit`` reads from: its own ranges' lengths."""

    def __init__(self, data: _UnitBytes, lengths: dict[tuple[str, int], int]) -> None:
        self.checkpoint = data.checkpoint
        self._data = data._data
        self._lengths = lengths

    def read_into(self, info: TensorInfo, out: torch.Tensor, start: int = 0) -> None:
        out.copy_(self._data[(info.shard, info.offset + start)][: out.numel()])

    def copy_to(self, writer: ShardWriter, name: str, info: TensorInfo, start: int) -> None:
        key = (info.shard, info.offset + start)
        writer.write(name, self._data[key][: self._lengths[key]])


class _AllTargets(FirstFailure):
    """The stream's failure (a read or a quantize step): recorded in every target too, so all of them stop."""

    def __init__(self, targets: Sequence[FirstFailure]) -> None:
        super().__init__()
        self._targets = list(targets)

    def set(self, err: BaseException) -> None:
        super().set(err)
        for failure in self._targets:
            failure.set(err)


class _TargetRun:
    """One target during a stream: its gate, uploader, output shards being written, and progress."""

    def __init__(self, target: FanOutTarget, members: list[Member]) -> None:
        self.target = target
        self.shards = list(target.shards)
        self.failure = FirstFailure()
        expected = shard_sizes(target.plan)
        self.expected = {s: expected[s] for s in self.shards}
        self.gate = DiskGate(target.disk_budget, LOCAL_SHARDS, self.failure)
        self.uploader = Uploader(self.shards, target.folder, target.upload, target.tick, gate=self.gate,
                                 failure=self.failure, progress=target.progress, total=sum(self.expected.values()),
                                 keep=target.keep)
        self.undispatched = Counter(m.shard for m in members)
        self.position = {s: i for i, s in enumerate(self.shards)}
        self.units = len(members)
        self.writers: dict[str, ShardWriter] = {}
        self._left = Counter(m.shard for m in members)  # units not yet written, per shard
        self._done_units = 0
        self._closed: list[str] = []
        self._lock = threading.Lock()

    def open(self, shard: str) -> bool:
        """Open ``shard`` when the gate has room; ``False`` once this target failed.

        The gate is waited on only when that cannot deadlock: the shards opened so far are
        exactly those before ``shard`` in upload order, each with all its units dispatched, so
        they finish and upload, in order, without this dispatcher. Otherwise (a joint unit that
        wrote into a later shard of this target first) the shard is held at once: the room
        the gate waits for would only free after ``shard`` itself is made.
        """
        if self.failure.error is not None:
            return False
        before = self.shards[: self.position[shard]]
        safe = len(self.writers) == len(before) and all(s in self.writers and not self.undispatched[s] for s in before)
        if safe and not self.gate.admit(self.expected[shard]):
            return False
        try:
            writer = self.writers[shard] = ShardWriter(self.target.folder / shard, self.target.plan.shard_outputs(shard))
        except OSError as err:
            raise _disk_error(err, self.target.folder, shard) from err
        self.gate.hold(writer.size)
        logger.debug("Writing %s (%s; %s of output shards on disk)", shard, format_bytes(writer.size),
                     format_bytes(self.gate.bytes))
        return True

    def unit_done(self, shard: str) -> None:
        """One unit of ``shard`` is written; after its last, the shard is closed and handed to the uploader."""
        with self._lock:
            self._done_units += 1
            self._left[shard] -= 1
            done, last = self._done_units, self._left[shard] == 0
        self.target.progress("quantize", done, self.units)
        if not last:
            return
        try:
            self.writers[shard].close()
        except OSError as err:
            raise _disk_error(err, self.target.folder, shard) from err
        with self._lock:
            self._closed.append(shard)
            closed = len(self._closed)
        self.target.progress("write", closed, len(self.shards))
        self.uploader.ready(shard, self.writers[shard].size)

    def abort_open(self) -> None:
        for shard, writer in self.writers.items():
            if shard not in self._closed:
                writer.abort()


def stream_units(
    checkpoint: Checkpoint,
    targets: Sequence[FanOutTarget],
    units: Sequence[JointUnit],
    open_reader: ReaderFactory,
    *,
    devices: Sequence[torch.device],
    workers: int,
) -> list[StreamReport | BaseException]:
    """The one dispatcher: ``units`` in order to the executor, into every target's shards; one result per target.

    The reader is opened with each unit's ``reads``. A unit of one member reads from it
    directly (no copy more than a single-scheme run makes); a joint unit's bytes are copied
    out once and served to each member. Each
    target's shard is opened when its gate admits it (``_TargetRun.open``) and handed to
    its uploader when its last unit is written.

    Returns, per target in order, its :class:`StreamReport`, or the error that stopped it
    (an upload failure stops one target; a read or quantize failure is every target's).
    Every target's folder holds no shard afterwards, but a ``keep`` target's finished shards.
    """
    runs = [_TargetRun(t, [m for u in units for m in u.members if m.target == k]) for k, t in enumerate(targets)]
    failure = _AllTargets([r.failure for r in runs])

    with open_reader([u.reads for u in units]) as reader:
        for run in runs:
            run.target.progress("quantize", 0, run.units)
            run.target.progress("write", 0, len(run.shards))

        def work(unit: JointUnit, device: torch.device) -> None:
            alone = len(unit.members) == 1 and list(unit.members[0].reads) == unit.reads  # read as planned
            shared = None if alone else _UnitBytes(reader, unit.reads)
            for member in unit.members:
                run = runs[member.target]
                if run.failure.error is not None:
                    continue
                source = reader if shared is None else shared.view(member)
                try:
                    process_unit(run.target.plan, member.unit, source, run.writers, device)
                except OSError as err:
                    raise _disk_error(err, run.target.folder, member.shard) from err
                run.unit_done(member.shard)

        for run in runs:
            run.uploader.start()
        try:
            with torch_threads(workers), UnitExecutor(work, workers=workers, devices=devices, failure=failure) as pool:
                for unit in units:
                    if not _dispatch(unit, runs, pool):
                        break
        except BaseException as err:
            failure.set(err)
        finally:
            for run in runs:
                run.uploader.join()
                run.abort_open()
    return [run.failure.error or StreamReport(tuple(run.shards), run.gate.peak) for run in runs]


def _dispatch(unit: JointUnit, runs: list[_TargetRun], pool: UnitExecutor[JointUnit]) -> bool:
    """Open the shards ``unit`` writes into, then queue it; ``False`` once no target is left running."""
    for member in unit.members:
        run = runs[member.target]
        if member.shard not in run.writers and run.failure.error is None:
            run.open(member.shard)
        run.undispatched[member.shard] -= 1
    if all(run.failure.error is not None for run in runs):
        return False
    return pool.submit(unit)


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

    :func:`stream_units` with one target: its units in ``shards`` order (a part's: biggest
    first), each shard opened when the disk gate admits it, each finished shard uploaded.

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
    target = FanOutTarget(plan, shards, folder, upload, tick, disk_budget, progress)
    (result,) = stream_units(checkpoint, [target], _own_units(plan, checkpoint, shards), open_reader,
                             devices=devices, workers=workers)
    if isinstance(result, BaseException):
        raise result
    return result


def stream_reads(plan: Plan, checkpoint: Checkpoint, shards: Sequence[str]) -> list[list[Read]]:
    """The input ranges ``stream_shards`` gives ``open_reader`` for ``shards``: a caller may read them early."""
    return [u.reads for u in _own_units(plan, checkpoint, shards)]


def _own_units(plan: Plan, checkpoint: Checkpoint, shards: Sequence[str]) -> list[JointUnit]:
    """One target's work units, one member each, in ``shards`` order, within a shard by first input byte."""
    units = []
    for shard in shards:
        for unit in work_units(plan, checkpoint, shard=shard):
            reads = tuple(unit_reads(checkpoint, unit))
            units.append(JointUnit(list(reads), [Member(0, shard, unit, reads)]))
    return units


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
