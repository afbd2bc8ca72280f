"""``model_free_ptq``: quantize a safetensors checkpoint folder (or Hub repo) into a new folder.

Flow: resolve the scheme (fail fast, before any I/O) -> open and validate every
header -> plan -> build shards in a hidden work folder, one work unit (a weight,
or a whole fused group) per task on ``max_workers`` threads (``units``) -> index
and config.json -> atomic rename. Tensors are read one unit at a time with
``pread`` and written in place, so memory is bounded by a few units, never by
shard size.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from threading import Lock
from typing import Iterable, Sequence

import torch

from .convert import model_config_update
from .errors import InvalidOptionError
from .job import Job, make_job
from .checkpoint import Checkpoint
from .job_plan import JobPlan, plan_job
from .output_config import check_merged_config, output_quantization_config
from .plan import Plan
from .source import ProgressCallback, resolve_source
from .sizes import compression_ratio
from .units import LocalReader, TensorReader, UnitExecutor, process_unit, torch_threads, work_units
from .output_folder import OutputWork, check_free_space, discard_output, prepare_output, publish_output
from .writer import ShardWriter, copy_extra_files, write_config, write_index

logger = logging.getLogger(__name__)

__all__ = [
    "ProgressCallback",
    "QuantizeResult",
    "model_free_ptq",
    "quantize_job",
    "resolve_devices",
]


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
    planned = plan_job(job, source)
    checkpoint, plan = planned.checkpoint, planned.plan
    quantization_config = output_config(planned)
    warn_skipped_files(checkpoint)
    check_free_space(Path(save_directory), output_bytes(source, planned))
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
        finish_output(work, plan, quantization_config)
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


def output_config(planned: JobPlan) -> dict | None:
    """The output's ``quantization_config``: the request's, or the source's merged with it and checked."""
    plan = planned.plan
    merged = output_quantization_config(planned.config, plan.source, plan.resolved,
                                        {i.module: i.group for i in plan.quantized},
                                        {i.module for i in plan.items if i.name.endswith((".weight", ".weight_packed"))})
    if merged.earlier_groups:
        check_merged_config(plan, merged.block, merged.earlier_groups)
    return merged.block


def warn_skipped_files(checkpoint: Checkpoint) -> None:
    for name in checkpoint.skipped_weight_files:
        logger.warning("Not copying %s: it duplicates the safetensors weights in another format.", name)


def output_bytes(source: Path, planned: JobPlan) -> int:
    """The output folder's exact size: the plan's shards and the side files copied."""
    return planned.plan.size_after + sum((source / f).stat().st_size for f in planned.checkpoint.extra_files)


def finish_output(work: OutputWork, plan: Plan, quantization_config: dict | None) -> None:
    """After the shards: the index and config.json, then the work folder renamed into place (``publish_output``)."""
    write_index(work, plan.weight_map(), plan.size_after)
    if not plan.quantized:  # without a quantization_config loaders do not expect packed weights
        logger.warning("Nothing to quantize with %s and this ignore list; the output %s.", plan.resolved.name,
                       "keeps the source's converted config" if quantization_config else "has no quantization_config")
    write_config(work, quantization_config, model_config_update(plan.source.converters))
    publish_output(work)


def _run_units(
    plan: Plan, reader: TensorReader, writers: dict[str, ShardWriter], devices: list[torch.device], workers: int,
    notify: ProgressCallback,
) -> None:
    """Every unit of the checkpoint, biggest first, on the one executor; ``quantize`` progress per unit."""
    units = work_units(plan)
    done = 0
    lock = Lock()
    notify("quantize", 0, len(units))

    def run(unit: list, device: torch.device) -> None:
        nonlocal done
        process_unit(plan, unit, reader, writers, device)
        with lock:
            done += 1
            notify("quantize", done, len(units))

    with UnitExecutor(run, workers=workers, devices=devices) as executor:
        for unit in units:
            if not executor.submit(unit):
                break
