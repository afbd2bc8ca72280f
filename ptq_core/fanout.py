"""One read of the source, several schemes: each input byte fetched once and quantized into every target.

A several-scheme job (``job.make_jobs``) plans one ``Plan`` per scheme over the same
checkpoint. Their work units differ (an NVFP4 fused group is one unit, FP8 quantizes
its members alone), but they read the same input ranges. :func:`joint_units` joins
every target's units that share an input range into one **joint unit**, and
:func:`fan_out_shards` hands them to ``stream.stream_units``, the one dispatcher of a
streamed job: one reader fetches the joint units' ranges once, in order; a worker
copies a joint unit's bytes out of the reader once, then runs each target's
``units.process_unit`` from those bytes into that target's own output shard.

Each target keeps what ``stream.stream_shards`` gives one scheme: its own folder,
``DiskGate`` (its share of the disk budget) and ``Uploader`` (its own staging branch).
An upload failure stops that target alone; the others finish. A read or quantize
failure stops all (the source is the same for every target).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace

import torch

from .checkpoint import Checkpoint
from .source import ProgressCallback
from .stream import FanOutTarget, JointUnit, Member, ReaderFactory, StreamReport, stream_units
from .units import unit_reads, work_units

__all__ = ["SHARED_STAGES", "FanOutTarget", "JointUnit", "SummedProgress", "fan_out_shards", "joint_units"]

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


def joint_units(checkpoint: Checkpoint, targets: Sequence[FanOutTarget]) -> list[JointUnit]:
    """Every target's units joined by shared input ranges, in input-shard order, then by first input byte.

    Output shards are named after the input shard that holds their first tensor
    (``planner``), so every target's shard ``k`` fills from about the same input bytes and
    all targets finish their shards in step (each target uploads its shards in this order,
    not in its ``shards`` order, which for a part is biggest first). A range read by several units (a fused
    group's partner in another shard, read by NVFP4's group and by FP8's lone weight)
    puts them into one joint unit, so the reader still sees each range once.
    """
    members = [Member(t, shard, unit, tuple(unit_reads(checkpoint, unit)))
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
    groups: dict[int, list[Member]] = {}
    for i, member in enumerate(members):
        groups.setdefault(root(i), []).append(member)
    order = _input_order(checkpoint)
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
    Every target's folder holds no shard afterwards (but a ``keep`` target's). Each target's shards are uploaded in
    input-shard order, the order the joint units fill them.
    """
    order = _input_order(checkpoint)
    in_step = [replace(t, shards=sorted(t.shards, key=lambda s: order.get(s, len(order)))) for t in targets]
    return stream_units(checkpoint, in_step, joint_units(checkpoint, targets), open_reader,
                        devices=devices, workers=workers)


def _input_order(checkpoint: Checkpoint) -> dict[str, int]:
    """Output shards are named after input shards: their position in the checkpoint."""
    return {name: k for k, name in enumerate(checkpoint.shards)}
