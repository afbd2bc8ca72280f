"""Work units: what one worker quantizes at a time, where its bytes come from, and the one executor.

A unit is a single weight, or every tensor that must be handled together: a fused
group (one NVFP4 global scale), the outputs a converter makes from one module
(converted once), the parts of an expert cut from one slice (read once).

The unit mechanics (``work_units``, ``unit_reads``, ``process_unit``) take any
:class:`TensorReader`: local shards (:class:`LocalReader`, ``pipeline.quantize_job``),
or HTTP Range reads of a Hub repo (``remote.RemoteReader``, driven by ``stream``).
Both run their units on one :class:`UnitExecutor`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from itertools import cycle
from threading import local
from typing import Generic, Protocol, TypeVar

import torch

from .checkpoint import Checkpoint, ShardReader, TensorInfo
from .convert import ST_TO_TORCH, run_chain
from .errors import ConverterError, NonFiniteScaleError, NonFiniteWeightError, TensorShapeError
from .experts import expert_part, is_contiguous
from .numerics import Scratch, dequantize_fp8_block, global_scale_from_stats, observe_weight, quantize_weight
from .plan import Plan, PlannedWeight
from .writer import ShardWriter

logger = logging.getLogger(__name__)

__all__ = [
    "FirstFailure",
    "LocalReader",
    "TensorReader",
    "UnitExecutor",
    "process_unit",
    "torch_threads",
    "unit_reads",
    "work_units",
]

U = TypeVar("U")


class TensorReader(Protocol):
    """Where a unit's input bytes come from: local shard files, or a Hub repo over HTTP."""

    checkpoint: Checkpoint

    def read_into(self, info: TensorInfo, out: torch.Tensor, start: int = 0) -> None:
        """Fill ``out`` (a CPU uint8 tensor) with the tensor's bytes from ``start`` on."""

    def copy_to(self, writer: ShardWriter, name: str, info: TensorInfo, start: int) -> None:
        """Write output tensor ``name`` of ``writer`` from the tensor's bytes at ``start``, as is."""


class LocalReader(ShardReader):
    """``checkpoint.ShardReader`` (``pread`` into buffers) with copies done by the kernel."""

    def copy_to(self, writer: ShardWriter, name: str, info: TensorInfo, start: int) -> None:
        writer.copy_from(name, self.fd(info.shard), info.offset + start)


@contextmanager
def torch_threads(workers: int):
    """Split the cores between workers so parallel tensors don't oversubscribe them."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def work_units(
    plan: Plan, checkpoint: Checkpoint | None = None, *, shard: str | None = None
) -> list[list[PlannedWeight]]:
    """One unit per weight, except that a fused group is one unit (its members share a scale),
    and so is every output a converter makes from one source module (converted once).

    Without ``checkpoint``: biggest first (better balance across workers, smallest
    tail). With it: in the order of the units' first input bytes, so that a remote
    reader fetches long adjacent ranges ahead of the workers. ``shard`` keeps only the
    units of that output shard (a fused group is written whole into one shard).
    """
    units: list[list[PlannedWeight]] = []
    owner: dict[tuple[str, object], int] = {}
    for item in plan.items:
        if shard is not None and item.shard != shard:
            continue
        keys = _unit_keys(item)
        if not keys:
            units.append([item])
            continue
        found = sorted({owner[k] for k in keys if k in owner})
        index = found[0] if found else len(units)
        if not found:
            units.append([])
        units[index].append(item)
        for other in found[1:]:  # the item joins two units (a fused group across converted modules)
            units[index].extend(units[other])
            units[other] = []
            for key, value in owner.items():
                if value == other:
                    owner[key] = index
        for key in keys:
            owner[key] = index
    units = [u for u in units if u]
    if checkpoint is None:
        return sorted(units, key=lambda u: -sum(_numel(i.shape) for i in u))
    order = {name: i for i, name in enumerate(checkpoint.shards)}
    return sorted(units, key=lambda u: min((order[s], offset) for s, offset, _ in unit_reads(checkpoint, u)))


def _unit_keys(item: PlannedWeight) -> tuple[tuple[str, object], ...]:
    keys: tuple[tuple[str, object], ...] = ()
    if item.fused is not None:
        keys += (("fused", item.fused),)
    if item.dequantize is not None and item.dequantize.by_converter:
        keys += (("module", item.dequantize.tensor),)
    if _is_sliced(item):  # the parts of one expert cut from one slice: read once, in one unit
        keys += (("expert", item.source.tensor, item.source.expert),)
    return keys


def _is_sliced(item: PlannedWeight) -> bool:
    """An expert part that is not one contiguous byte range: its expert's whole slice is read."""
    return item.source.expert is not None and not is_contiguous(item.source.layout)


def unit_reads(checkpoint: Checkpoint, unit: list[PlannedWeight]) -> list[tuple[str, int, int]]:
    """``(input shard, absolute offset, nbytes)`` of every input range ``process_unit`` reads, in its order.

    A weight decoded from FP8 blocks is followed by its ``weight_scale_inv``, wherever that
    sits; a converted module's inputs are read whole, once per unit.
    """
    reads = []
    converted: set[str] = set()
    for item in unit:
        step = item.dequantize
        if step is not None and step.by_converter:
            if step.tensor not in converted:
                converted.add(step.tensor)
                for name in (step.tensor, *step.dependencies):
                    info = checkpoint.tensors[name]
                    reads.append((info.shard, info.offset, info.nbytes))
            continue
        span = _source_span(checkpoint, item)
        if span in reads:  # an expert slice shared by its parts is read once
            continue
        reads.append(span)
        for dependency in step.dependencies if step is not None else ():
            info = checkpoint.tensors[dependency]
            reads.append((info.shard, info.offset, info.nbytes))
    return reads


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _source_span(checkpoint: Checkpoint, item: PlannedWeight) -> tuple[str, int, int]:
    """(shard, absolute offset, nbytes) of what is read for an item: the tensor, the contiguous
    range of an expert part stored by rows, or the whole expert slice of a part that is not
    contiguous (transposed or interleaved; cut in memory).
    """
    info = checkpoint.tensors[item.source.tensor]
    if item.source.expert is None:
        return info.shard, info.offset, info.nbytes
    per_expert = info.nbytes // info.shape[0]
    start = info.offset + item.source.expert * per_expert
    if not is_contiguous(item.source.layout):
        return info.shard, start, per_expert
    per_part = per_expert // item.source.parts
    return info.shard, start + item.source.part * per_part, per_part


def _expert_slice(reader: TensorReader, item: PlannedWeight, slices: dict[tuple[str, int], torch.Tensor]) -> torch.Tensor:
    """The stored 2-D slice of an item's expert, read once per work unit (its parts share it)."""
    key = (item.source.tensor, item.source.expert)
    if key not in slices:
        _shard, offset, nbytes = _source_span(reader.checkpoint, item)
        info = reader.checkpoint.tensors[item.source.tensor]
        raw = torch.empty(nbytes, dtype=torch.uint8)
        reader.read_into(info, raw, offset - info.offset)
        slices[key] = raw.view(ST_TO_TORCH[info.dtype]).view(info.shape[1:])
    return slices[key]


def _load(
    reader: TensorReader, item: PlannedWeight, device: torch.device, scratch: Scratch, slot: int, plan: Plan,
    converted: dict[str, dict[str, torch.Tensor]], slices: dict[tuple[str, int], torch.Tensor],
) -> torch.Tensor:
    """Read an item's values into this worker's input buffer ``slot`` (one per fused member).

    An output of a converter comes from ``converted`` (one module's chain output, made
    once per work unit); a transposed or interleaved expert part is cut from its expert's
    slice in ``slices`` (read once per work unit).
    """
    if item.dequantize is not None and item.dequantize.by_converter:
        tensor = _converted(reader, item, plan, converted)
    elif _is_sliced(item):
        part = expert_part(_expert_slice(reader, item, slices), item.source.layout, item.source.part, item.source.parts)
        tensor = scratch.get(f"in{slot}", item.shape, part.dtype, torch.device("cpu"))
        tensor.copy_(part)
        if item.dequantize is not None:
            tensor = _dequantized(reader, item, tensor, scratch, slot, plan.source.format.block)
    else:
        _shard, offset, nbytes = _source_span(reader.checkpoint, item)
        info = reader.checkpoint.tensors[item.source.tensor]
        host = scratch.get(f"in{slot}", (nbytes,), torch.uint8, torch.device("cpu"))
        reader.read_into(info, host, offset - info.offset)
        tensor = host.view(ST_TO_TORCH[info.dtype]).view(item.shape)
        if item.dequantize is not None:  # FP8 blocks -> the dense weight, in this worker's buffer
            tensor = _dequantized(reader, item, tensor, scratch, slot, plan.source.format.block)
    if device.type == "cpu":
        return tensor
    return tensor.to(device)


def _converted(
    reader: TensorReader, item: PlannedWeight, plan: Plan, converted: dict[str, dict[str, torch.Tensor]]
) -> torch.Tensor:
    """An item's tensor from its module's converter chain output (run once per work unit)."""
    step = item.dequantize
    if step.tensor not in converted:
        inputs = {}
        for name in (step.tensor, *step.dependencies):
            info = reader.checkpoint.tensors[name]
            raw = torch.empty(info.nbytes, dtype=torch.uint8)
            reader.read_into(info, raw)
            inputs[name] = raw.view(ST_TO_TORCH[info.dtype]).view(info.shape)
        converted[step.tensor] = run_chain(inputs, plan.source.converters, step.module)
    tensor = converted[step.tensor].get(step.output)
    got = None if tensor is None else (tensor.dtype, tuple(tensor.shape))
    if got != (ST_TO_TORCH[step.dtype], step.shape):
        raise ConverterError(
            f"{step.module}: the converter chain made {step.output} as {got or 'nothing'} from the data, but "
            f"{(ST_TO_TORCH[step.dtype], step.shape)} when planned from the headers; its output must not depend on values."
        )
    if item.source.expert is not None:  # one part of one expert of a 3-D converted tensor
        tensor = expert_part(tensor[item.source.expert], item.source.layout, item.source.part, item.source.parts)
    return tensor.contiguous()


def _dequantized(
    reader: TensorReader, item: PlannedWeight, fp8: torch.Tensor, scratch: Scratch, slot: int, block: tuple[int, int]
) -> torch.Tensor:
    """``dequantize_fp8_block`` of an FP8-block weight, its scale read from whichever shard holds it."""
    (scale_name,) = item.dequantize.dependencies
    info = reader.checkpoint.tensors[scale_name]
    raw = scratch.get(f"dep{slot}", (info.nbytes,), torch.uint8, torch.device("cpu"))
    reader.read_into(info, raw)
    scale_inv = raw.view(ST_TO_TORCH[info.dtype]).view(info.shape)
    out = scratch.get(f"dense{slot}", item.shape, ST_TO_TORCH[item.dtype], torch.device("cpu"))
    return dequantize_fp8_block(fp8, scale_inv, out.dtype, block=block, out=out)


_THREAD = local()


def _scratch() -> Scratch:
    """This worker thread's reusable buffers."""
    if not hasattr(_THREAD, "scratch"):
        _THREAD.scratch = Scratch()
    return _THREAD.scratch


@contextmanager
def _naming(item: PlannedWeight, reader: TensorReader) -> Iterator[None]:
    """Kernel errors say "the weight ..." or "its ...": name the tensor and its shard in front."""
    stored = item.dequantize.tensor if item.dequantize is not None else item.source.tensor
    shard = reader.checkpoint.tensors[stored].shard
    try:
        yield
    except NonFiniteWeightError as err:
        raise NonFiniteWeightError(
            f"{item.name} (in {shard}) holds NaN or Inf values; fix the checkpoint or add {item.module!r} to ignore."
        ) from err
    except (NonFiniteScaleError, TensorShapeError) as err:
        raise type(err)(f"{item.name} (in {shard}): {err}") from err


def process_unit(
    plan: Plan, unit: list[PlannedWeight], reader: TensorReader, writers: dict[str, ShardWriter], device: torch.device
) -> None:
    """Quantize (or copy) one unit from ``reader`` into its output shard's writer."""
    scratch = _scratch()
    converted: dict[str, dict[str, torch.Tensor]] = {}
    slices: dict[tuple[str, int], torch.Tensor] = {}
    for slot, item in enumerate(unit):
        if item.group is not None:
            continue
        if item.dequantize is not None or _is_sliced(item):  # decoded, or cut from an expert slice
            writers[item.shard].write(item.outputs[0].name,
                                      _load(reader, item, torch.device("cpu"), scratch, slot, plan, converted, slices))
        else:  # copied as is: local bytes never enter Python
            info = reader.checkpoint.tensors[item.source.tensor]
            _shard, offset, _ = _source_span(reader.checkpoint, item)
            reader.copy_to(writers[item.shard], item.outputs[0].name, info, offset - info.offset)
    sets: dict[object, list[PlannedWeight]] = {}
    for item in unit:
        if item.group is not None:  # a fused group shares one global scale; others stand alone
            sets.setdefault(item.name if item.fused is None else item.fused, []).append(item)
    for members in sets.values():
        _quantize_set(plan, members, reader, writers, device, scratch, converted, slices)


def _quantize_set(
    plan: Plan, members: list[PlannedWeight], reader: TensorReader, writers: dict[str, ShardWriter],
    device: torch.device, scratch: Scratch, converted: dict[str, dict[str, torch.Tensor]],
    slices: dict[tuple[str, int], torch.Tensor],
) -> None:
    """Quantize one weight, or one fused group with its shared global scale."""
    weights = [_load(reader, item, device, scratch, slot, plan, converted, slices) for slot, item in enumerate(members)]
    global_scale, stats = None, [None] * len(members)
    if len(members) > 1:  # a fused group: one global scale from every member's observed range
        stats = []
        for item, weight in zip(members, weights):
            with _naming(item, reader):
                stats.append(observe_weight(weight, plan.specs[item.group], scratch))
        global_scale = global_scale_from_stats(stats)
    for item, weight, observed in zip(members, weights, stats):
        writer = writers[item.shard]
        prefix = item.module + "."

        def sink(local_name: str, first_row: int, rows: torch.Tensor) -> None:
            writer.write_rows(prefix + local_name, first_row, rows)

        with _naming(item, reader):
            outputs = quantize_weight(
                weight, plan.specs[item.group], global_scale=global_scale, stats=observed, sink=sink, scratch=scratch
            )
        for local_name, tensor in outputs.items():
            writer.write(prefix + local_name, tensor)
        logger.debug("quantized %s -> %s", item.name, ", ".join(outputs))


class FirstFailure:
    """The first error of any thread of a job; recording it wakes every watched condition, so all stop.

    Threads that wait on a condition (for room on disk, for a free worker, for a shard to
    upload) register it with :meth:`watch` and check :attr:`error` whenever they wake.
    Never call :meth:`set` while holding a watched condition.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: list[threading.Condition] = []
        self.error: BaseException | None = None

    def watch(self, cond: threading.Condition) -> threading.Condition:
        with self._lock:
            self._watched.append(cond)
        return cond

    def set(self, err: BaseException) -> None:
        """Record ``err`` unless an earlier error was recorded; wake every waiter either way."""
        with self._lock:
            if self.error is None:
                self.error = err
            watched = list(self._watched)
        for cond in watched:
            with cond:
                cond.notify_all()

    def raise_if_set(self) -> None:
        if self.error is not None:
            raise self.error


class UnitExecutor(Generic[U]):
    """Runs work units on ``workers`` threads, devices round-robin; the first failure stops it.

    The one executor of work units: ``quantize_job`` submits a checkpoint's units, the
    streamed Hub job submits them output shard by output shard. ``submit`` blocks while
    two units per worker are queued (a dispatcher never runs far ahead of the workers,
    so its reader's window and its disk gate stay meaningful) and returns ``False`` once
    any thread failed; units queued then are skipped. Leaving the ``with`` block waits
    for the workers and raises the first failure (an error of the block itself wins).
    """

    def __init__(
        self, run: Callable[[U, torch.device], None], *, workers: int, devices: Sequence[torch.device],
        failure: FirstFailure | None = None,
    ) -> None:
        self._run = run
        self._workers = workers
        self._devices = cycle(devices)
        self.failure = failure if failure is not None else FirstFailure()
        self._cond = self.failure.watch(threading.Condition())
        self._in_flight = 0
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ptq")

    def __enter__(self) -> UnitExecutor[U]:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is not None:
            self.failure.set(exc)
        self._pool.shutdown(wait=True)
        if exc is None:
            self.failure.raise_if_set()

    def submit(self, unit: U) -> bool:
        """Queue ``unit``; ``False`` (nothing queued) once a failure was recorded."""
        with self._cond:
            while self.failure.error is None and self._in_flight >= 2 * self._workers:
                self._cond.wait()
            if self.failure.error is not None:
                return False
            self._in_flight += 1
        self._pool.submit(self._call, unit, next(self._devices))
        return True

    def _call(self, unit: U, device: torch.device) -> None:
        try:
            if self.failure.error is None:
                self._run(unit, device)
        except BaseException as err:  # noqa: BLE001 - raised by __exit__ (or by the stream that shares it)
            self.failure.set(err)
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()
