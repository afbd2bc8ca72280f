"""One read of the source, several schemes: each input byte fetched once and quantized into every target.

A several-scheme job (``job.make_jobs``) plans one ``Plan`` per scheme over the same
checkpoint. Their work units differ (an NVFP4 fused group is one unit, FP8 quantizes
its members alone), but they read the same input ranges. :func:`joint_units` joins
every target's units that share an input range into one **joint unit**; one reader
fetches the joint units' ranges once, in order; a worker copies a joint unit's bytes
out of the reader once (:class:`_UnitBytes`), then runs each target's
``units.process_unit`` from those bytes into that target's own output shard.

Each target keeps what ``stream.stream_shards`` gives one scheme: its own folder,
``DiskGate`` (its share of the disk budget) and ``Uploader`` (its own staging branch).
An upload failure stops that target alone; the others finish. A read or quantize
failure stops all (the source is the same for every target).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import Checkpoint, TensorInfo
from .parts import LOCAL_SHARDS, shard_sizes
from .plan import Plan, PlannedWeight
from .source import ProgressCallback
from .stream import DiskGate, ReaderFactory, StreamReport, Uploader, _disk_error, _Shards
from .units import FirstFailure, TensorReader, UnitExecutor, process_unit, torch_threads, unit_reads, work_units
from .writer import ShardWriter

logger = logging.getLogger(__name__)

__all__ = ["SHARED_STAGES", "FanOutTarget", "JointUnit", "SummedProgress", "fan_out_shards", "joint_units"]

_Read = tuple[str, int, int]

SHARED_STAGES = ("download", "validate")
"""Stages of the one read: reported once, not summed over the targets."""


class SummedProgress:
    """One progress callback for several targets: the shared read as it is, every other stage summed.

    So a front end shows one bar per stage, as for one scheme (``of(k)`` is target ``k``'s callback).
    """

    def __init__(self, progress: ProgressCallback | None) -> None:
        self._progress = progress
        self._last: dict[tuple[str, int], tuple[int, int]] = {}
        self._lock = threading.Lock()

    def of(self, target: int) -> ProgressCallback:
        def report(stage: str, done: int, total: int) -> None:
            if self._progress is None:
                return
            with self._lock:
                self._last[(stage, 0 if stage in SHARED_STAGES else target)] = (done, total)
                values = [v for (s, _), v in self._last.items() if s == stage]
                self._progress(stage, sum(v[0] for v in values), sum(v[1] for v in values))

        return report


@dataclass
class FanOutTarget:
    """One scheme's side of a shared read: its plan, the output shards to make, where they go.

    ``upload``, ``tick``, ``progress`` and ``disk_budget`` mean what they mean for
    ``stream.stream_shards``; ``folder`` is this target's own (shard names repeat across targets).
    ``keep``: the shards are this target's output (a local folder): ``upload`` is told of each,
    none is deleted (``stream.Uploader``'s ``keep``).
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
class _Member:
    target: int
    shard: str
    unit: list[PlannedWeight]
    reads: tuple[_Read, ...]


@dataclass
class JointUnit:
    """The units of every target that read a common input range, and their reads, each range once."""

    reads: list[_Read]
    members: list[_Member] = field(default_factory=list)


def joint_units(checkpoint: Checkpoint, targets: Sequence[FanOutTarget]) -> list[JointUnit]:
    """Every target's units joined by shared input ranges, in input-shard order, then by first input byte.

    Output shards are named after the input shard that holds their first tensor
    (``planner``), so every target's shard ``k`` fills from about the same input bytes and
    all targets finish their shards in step (each target uploads its shards in this order,
    not in its ``shards`` order, which for a part is biggest first). A range read by several units (a fused
    group's partner in another shard, read by NVFP4's group and by FP8's lone weight)
    puts them into one joint unit, so the reader still sees each range once.
    """
    members = [_Member(t, shard, unit, tuple(unit_reads(checkpoint, unit)))
               for t, target in enumerate(targets) for shard in target.shards
               for unit in work_units(target.plan, checkpoint, shard=shard)]
    parent = list(range(len(members)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[tuple[str, int], int] = {}
    for i, member in enumerate(members):
        for shard, offset, _ in member.reads:
            j = owner.setdefault((shard, offset), i)
            if j != i:
                parent[root(i)] = root(j)
    groups: dict[int, list[_Member]] = {}
    for i, member in enumerate(members):
        groups.setdefault(root(i), []).append(member)
    order = {name: k for k, name in enumerate(checkpoint.shards)}
    joint = []
    for group in groups.values():
        longest: dict[tuple[str, int], int] = {}
        for member in group:
            for shard, offset, nbytes in member.reads:
                longest[(shard, offset)] = max(nbytes, longest.get((shard, offset), 0))
        joint.append(JointUnit([(s, o, n) for (s, o), n in longest.items()], group))

    def key(unit: JointUnit) -> tuple[int, tuple[int, int]]:
        first_shard = min(order.get(m.shard, len(order)) for m in unit.members)
        return first_shard, min(((order[s], o) for s, o, _ in unit.reads), default=(0, 0))

    return sorted(joint, key=key)


class _UnitBytes:
    """A joint unit's input bytes, copied out of the shared reader once, served to each member."""

    def __init__(self, reader: TensorReader, reads: Sequence[_Read]) -> None:
        self.checkpoint = reader.checkpoint
        self._data: dict[tuple[str, int], torch.Tensor] = {}
        for shard, offset, nbytes in reads:
            buffer = torch.empty(nbytes, dtype=torch.uint8)
            reader.read_into(TensorInfo("", shard, "U8", (nbytes,), offset, nbytes), buffer)
            self._data[(shard, offset)] = buffer

    def view(self, member: _Member) -> _MemberReader:
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
    """The job's failure (a read or a quantize step): recorded in every target too, so all of them stop."""

    def __init__(self, targets: Sequence[FirstFailure]) -> None:
        super().__init__()
        self._targets = list(targets)

    def set(self, err: BaseException) -> None:
        super().set(err)
        for failure in self._targets:
            failure.set(err)


class _TargetRun:
    """One target's gate, uploader and open shards during a fan-out."""

    def __init__(self, target: FanOutTarget, members: list[_Member], order: dict[str, int]) -> None:
        self.target = target
        self.shards = sorted(target.shards, key=lambda s: order.get(s, len(order)))  # the joint units' order
        self.failure = FirstFailure()
        expected = shard_sizes(target.plan)
        self.expected = {s: expected[s] for s in self.shards}
        self.gate = DiskGate(target.disk_budget, LOCAL_SHARDS, self.failure)
        self.uploader = Uploader(self.shards, target.folder, target.upload, target.tick, gate=self.gate,
                                 failure=self.failure, progress=target.progress, total=sum(self.expected.values()),
                                 keep=target.keep)
        self.local = _Shards(target.plan, target.folder, [(m.shard, m.unit) for m in members], len(self.shards),
                             target.progress)
        self.undispatched = Counter(m.shard for m in members)
        self.position = {s: i for i, s in enumerate(self.shards)}
        self.units = len(members)

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
        safe = len(self.local.writers) == len(before) and all(
            s in self.local.writers and not self.undispatched[s] for s in before)
        if safe and not self.gate.admit(self.expected[shard]):
            return False
        self.gate.hold(self.local.open(shard).size)
        return True


def fan_out_shards(
    checkpoint: Checkpoint,
    targets: Sequence[FanOutTarget],
    open_reader: ReaderFactory,
    *,
    devices: Sequence[torch.device],
    workers: int,
) -> list[StreamReport | BaseException]:
    """Make every target's output ``shards`` from one read of their inputs; one result per target.

    Returns, per target in order, its :class:`stream.StreamReport`, or the error that stopped
    it (an upload failure stops one target; a read or quantize failure is every target's).
    Every target's folder holds no shard afterwards, but a ``keep`` target's finished shards.
    """
    units = joint_units(checkpoint, targets)
    order = {name: k for k, name in enumerate(checkpoint.shards)}
    runs = [_TargetRun(t, [m for u in units for m in u.members if m.target == k], order) for k, t in enumerate(targets)]
    failure = _AllTargets([r.failure for r in runs])

    with open_reader([u.reads for u in units]) as reader:
        for run in runs:
            run.target.progress("quantize", 0, run.units)
            run.target.progress("write", 0, len(run.shards))

        def work(unit: JointUnit, device: torch.device) -> None:
            data = _UnitBytes(reader, unit.reads)
            for member in unit.members:
                run = runs[member.target]
                if run.failure.error is not None:
                    continue
                try:
                    process_unit(run.target.plan, member.unit, data.view(member), run.local.writers, device)
                except OSError as err:
                    raise _disk_error(err, run.target.folder, member.shard) from err
                if run.local.unit_done(member.shard):
                    run.uploader.ready(member.shard, run.local.close(member.shard))

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
                run.local.abort_open()
    return [run.failure.error or StreamReport(tuple(run.shards), run.gate.peak) for run in runs]


def _dispatch(unit: JointUnit, runs: list[_TargetRun], pool: UnitExecutor[JointUnit]) -> bool:
    """Open the shards ``unit`` writes into, then queue it; ``False`` once no target is left running."""
    for member in unit.members:
        run = runs[member.target]
        if member.shard not in run.local.writers and run.failure.error is None:
            run.open(member.shard)
        run.undispatched[member.shard] -= 1
    if all(run.failure.error is not None for run in runs):
        return False
    return pool.submit(unit)
