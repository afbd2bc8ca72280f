"""``model_free_ptq``: quantize a safetensors checkpoint folder (or Hub repo) into a new folder.

Flow: resolve the scheme (fail fast, before any I/O) -> open and validate every
header -> plan -> build shards in a hidden work folder, one work unit (a weight,
or a whole fused group) per task on ``max_workers`` threads -> index and
config.json -> atomic rename. Tensors are read one unit at a time with
``pread`` and written in place, so memory is bounded by a few units, never by
shard size.

The unit mechanics (``work_units``, ``unit_reads``, ``process_unit``) take any
:class:`TensorReader`: local shards here (:class:`LocalReader`), HTTP Range reads
of a Hub repo in the streamed Hub job (``remote.RemoteReader``, driven by ``stream``).
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import cycle
from pathlib import Path
from threading import Lock, local
from typing import Iterable, Iterator, Protocol, Sequence

import torch

from .checkpoint import Checkpoint, ShardReader, TensorInfo, open_checkpoint, read_config
from .convert import ST_TO_TORCH, run_chain
from .errors import ConverterError, InvalidOptionError, NonFiniteScaleError, NonFiniteWeightError, TensorShapeError
from .experts import expert_part, is_contiguous
from .job import Job, make_job
from .numerics import Scratch, dequantize_fp8_block, global_scale_from_stats, observe_weight, quantize_weight
from .output_config import check_merged_config, output_quantization_config
from .plan import Plan, PlannedWeight
from .planner import plan_model
from .source import ProgressCallback, resolve_source
from .sizes import compression_ratio
from .writer import (
    ShardWriter,
    check_free_space,
    copy_extra_files,
    discard_output,
    prepare_output,
    publish_output,
    write_config,
    write_index,
)

logger = logging.getLogger(__name__)

__all__ = [
    "LocalReader",
    "ProgressCallback",
    "QuantizeResult",
    "TensorReader",
    "model_free_ptq",
    "process_unit",
    "quantize_job",
    "resolve_devices",
    "torch_threads",
    "unit_reads",
    "work_units",
]


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


@dataclass(frozen=True)
class QuantizeResult:
    """What ``model_free_ptq`` produced."""

    save_directory: Path
    plan: Plan
    size_before: int
    size_after: int
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return compression_ratio(self.size_before, self.size_after)


def resolve_devices(device: str | torch.device | Sequence[str | torch.device] | None) -> list[torch.device]:
    """``None`` -> every CUDA device if present, else CPU; a list -> those devices.

    Raises:
        InvalidOptionError: an unknown device string, or a CUDA device that is absent.
    """
    if device is None:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [torch.device("cuda", i) for i in range(count)] or [torch.device("cpu")]
    items = list(device) if isinstance(device, (list, tuple)) else [device]
    if not items:
        raise InvalidOptionError("The device list is empty; pass e.g. 'cpu' or 'cuda:0'.")
    devices = []
    for item in items:
        try:
            dev = torch.device(item)
        except (RuntimeError, TypeError) as err:
            raise InvalidOptionError(f"Unknown device {item!r}; use 'cpu', 'cuda' or 'cuda:N'.") from err
        if dev.type not in ("cpu", "cuda"):
            raise InvalidOptionError(f"Device {item!r} is not supported; use 'cpu', 'cuda' or 'cuda:N'.")
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise InvalidOptionError(f"Device {item!r} asked for, but no CUDA GPU is available; use 'cpu'.")
            dev = torch.device("cuda", dev.index or 0)
            if dev.index >= torch.cuda.device_count():
                raise InvalidOptionError(f"Device {item!r} does not exist ({torch.cuda.device_count()} GPU(s)).")
        devices.append(dev)
    return devices


@contextmanager
def torch_threads(workers: int):
    """Split the cores between workers so parallel tensors don't oversubscribe them."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def model_free_ptq(
    model_stub: str | os.PathLike,
    save_directory: str | os.PathLike,
    scheme=None,
    config=None,
    ignore: Iterable[str] = (),
    max_workers: int = 1,
    device: str | torch.device | Sequence[str | torch.device] | None = None,
    converter: object = None,
    *,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    revision: str | None = None,
    token: str | None = None,
) -> QuantizeResult:
    """Quantize a checkpoint without a model definition (drop-in for llm-compressor's).

    Args:
        model_stub: a local folder with safetensors files, or a Hub repo id.
        save_directory: output folder; created, must be empty unless ``overwrite``.
        scheme: a preset name (``"FP8_BLOCK"``) or a ``QuantizationScheme``.
        config: a ``QuantizationConfig`` with one or more groups (first match wins).
        ignore: exact module names or ``re:`` regexes to keep unquantized; modules
            ending in ``norm`` are always kept.
        max_workers: threads; each quantizes one weight or fused group at a time.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a list (round-robin); default GPU if any.
        converter: a compressed-tensors ``Converter`` (``FP8BlockDequantizer``,
            ``CompressedTensorsDequantizer``, ``ModelOptNvfp4Converter``, ``AutoAWQConverter``...)
            or a list applied in order, before quantizing, module by module in memory.
            ``None``: FP8-block, ModelOpt and AWQ sources are detected and dequantized; a
            compressed-tensors source keeps its compressed modules and the new groups are
            appended to its config, as llm-compressor does.
        overwrite: replace a non-empty ``save_directory``.
        progress: ``progress(stage, done, total)`` callback.
        revision, token: for a Hub ``model_stub``.

    Returns:
        ``QuantizeResult`` with the plan, sizes and timings.

    Raises:
        SchemeNotSupportedError, CalibrationRequiredError, InvalidIgnoreError: bad request.
        NoSafetensorsError, CorruptCheckpointError, MissingShardError: bad checkpoint.
        TensorShapeError, NonFiniteWeightError: a weight cannot be quantized.
        OutputExistsError, OutputLocationError: bad output folder.
        Nothing is left at ``save_directory`` when any of these is raised.

    Example:
        >>> model_free_ptq("./Llama-3.2-1B", "./Llama-3.2-1B-NVFP4A16", "NVFP4A16",
        ...                ignore=["lm_head"], max_workers=2)  # doctest: +SKIP
    """
    job = make_job(
        model_stub, scheme, config=config, ignore=ignore, default_ignore=False, revision=revision,
        overwrite=overwrite, device=device, workers=max_workers, converters=converter, append=converter is None,
    )
    return quantize_job(job, save_directory, token=token, progress=progress)


def quantize_job(
    job: Job,
    save_directory: str | os.PathLike,
    *,
    token: str | None = None,
    progress: ProgressCallback | None = None,
) -> QuantizeResult:
    """Quantize the checkpoint a ``Job`` names into ``save_directory`` (see ``model_free_ptq``).

    Raises:
        the checkpoint, output and device errors of ``model_free_ptq``.
    """
    start = time.perf_counter()
    timings: dict[str, float] = {}
    notify = progress or (lambda stage, done, total: None)
    devices = resolve_devices(job.device)

    t = time.perf_counter()
    source = resolve_source(job.source, revision=job.revision, token=token, progress=progress)
    timings["download"] = time.perf_counter() - t

    t = time.perf_counter()
    notify("validate", 0, 1)
    checkpoint = open_checkpoint(source)
    config = read_config(source)
    plan = plan_model(checkpoint, job.resolved, config, job.converters, append=job.append, tp=job.tp)
    merged = output_quantization_config(config, plan.source, plan.resolved, {i.module: i.group for i in plan.quantized},
                                        {i.module for i in plan.items if i.name.endswith((".weight", ".weight_packed"))})
    if merged.earlier_groups:
        check_merged_config(plan, merged.block, merged.earlier_groups)
    quantization_config = merged.block
    for name in checkpoint.skipped_weight_files:
        logger.warning("Not copying %s: it duplicates the safetensors weights in another format.", name)
    check_free_space(Path(save_directory), plan.size_after + sum((source / f).stat().st_size for f in checkpoint.extra_files))
    work = prepare_output(source, Path(save_directory), overwrite=job.overwrite)
    notify("validate", 1, 1)
    timings["validate"] = time.perf_counter() - t
    logger.info(
        "Quantizing %d of %d tensors with %s on %s, %d worker(s)",
        len(plan.quantized), len(plan.items), job.scheme_name, ", ".join(map(str, devices)), job.workers,
    )

    writers: dict[str, ShardWriter] = {}
    try:
        t = time.perf_counter()
        copy_extra_files(source, work, checkpoint.extra_files)
        writers = {shard: ShardWriter(work / shard, plan.shard_outputs(shard)) for shard in plan.shards}
        with LocalReader(checkpoint) as reader, torch_threads(job.workers):
            _run_units(plan, reader, writers, devices, job.workers, notify)
        for writer in writers.values():
            writer.close()
        timings["quantize"] = time.perf_counter() - t

        t = time.perf_counter()
        notify("write", 0, 1)
        write_index(work, plan.weight_map(), plan.size_after)
        if not plan.quantized:  # without a quantization_config loaders do not expect packed weights
            logger.warning("Nothing to quantize with %s and this ignore list; the output %s.", job.scheme_name,
                           "keeps the source's converted config" if quantization_config else "has no quantization_config")
        write_config(work, quantization_config)
        publish_output(work)
        notify("write", 1, 1)
        timings["write"] = time.perf_counter() - t
    except BaseException:
        for writer in writers.values():
            writer.abort()
        discard_output(work)
        raise
    seconds = time.perf_counter() - start
    logger.info("Wrote %s in %.1f s (%.2fx smaller)", save_directory, seconds, plan.ratio)
    return QuantizeResult(Path(save_directory), plan, plan.size_before, plan.size_after, seconds, timings)


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


def _run_units(plan, reader, writers, devices, max_workers, notify) -> None:
    units = work_units(plan)
    total = len(units)
    done = 0
    lock = Lock()
    device_for = cycle(devices)
    notify("quantize", 0, total)

    def run(unit, device):
        nonlocal done
        process_unit(plan, unit, reader, writers, device)
        with lock:
            done += 1
            notify("quantize", done, total)

    if max_workers == 1:
        for unit in units:
            run(unit, next(device_for))
        return
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ptq") as pool:
        futures = [pool.submit(run, unit, next(device_for)) for unit in units]
        finished, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for fut in pending:
            fut.cancel()
        for fut in finished:
            fut.result()  # re-raise the first failure


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
