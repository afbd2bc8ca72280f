"""One read of a source, several schemes, each into its own local folder: ``quantize_jobs``.

``ptq quantize SOURCE OUTPUT --scheme FP8_BLOCK,NVFP4A16,W4A16``. The local twin of
``hubjob.many.quantize_many_to_hub``, on the same fan-out (``fanout.fan_out_shards``):

    check:    every scheme's output folder before anything is written (``one_read.check_one_read``,
              ``output_folder.check_output``: an existing output without ``overwrite`` is refused)
    plan:     the source resolved once (a Hub id is downloaded once), headers and config.json
              read once, one ``JobPlan`` per scheme; the disk checked for all outputs together
    quantize: one ``LocalReader`` feeding ``fan_out_shards``: each input byte is read once and
              quantized into every scheme's shards, written straight into that scheme's hidden
              work folder (``keep``: the shards are the output, nothing is uploaded or deleted)
    publish:  per scheme, its index and config.json, then its own atomic rename
              (``pipeline.finish_output``), exactly as a single ``quantize_job`` does

Folder naming: ``save_directory`` is a **parent**; scheme ``S`` of ``org/Model`` (or of a
folder ``Model``) goes to ``save_directory/Model-S`` (``Model-FP8-BLOCK``), the name
``ptq run`` gives its Hub repo (``job.default_repo_name``), so a folder uploads under the
name the Hub job would choose, and a later run adds schemes next to earlier ones without
touching them. A list of folders, one per job, names them instead.

Failures: a read or quantize failure is every scheme's (one source): it is raised and no
folder is left, as for one scheme. A scheme whose own step fails (its index, config or
rename: a file that appeared in its folder during the run) leaves its folder as it was and
is reported in ``errors``; the other schemes' folders are published.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import InvalidOptionError, OutputExistsError, OutputLocationError
from .fanout import FanOutTarget, SummedProgress, fan_out_shards
from .job import Job, default_repo_name
from .job_plan import JobPlan, plan_job
from .one_read import check_one_read
from .output_folder import (
    OutputWork, check_free_space, check_output, discard_output, existing_ancestor, prepare_output,
)
from .pipeline import (
    QuantizeResult, finish_output, output_bytes, output_config, resolve_devices, warn_skipped_files,
)
from .source import ProgressCallback, resolve_source
from .units import LocalReader
from .writer import copy_extra_files

logger = logging.getLogger(__name__)

__all__ = ["QuantizeJobsResult", "output_folders", "quantize_jobs"]


@dataclass(frozen=True)
class QuantizeJobsResult:
    """What ``quantize_jobs`` made: a result per published scheme, an error per scheme that failed.

    Attributes:
        results: per scheme (canonical name) whose folder was published, its :class:`QuantizeResult`.
        errors: per scheme whose folder was not published, the error (its folder is as it was).
    """

    results: dict[str, QuantizeResult]
    errors: dict[str, BaseException] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def output_folders(jobs: Sequence[Job], save_directory: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
                   ) -> list[Path]:
    """Each job's output folder: ``save_directory/{Model}-{SCHEME}`` under a parent, or the list given.

    Raises:
        InvalidOptionError: a list of folders whose length is not the number of jobs.
        OutputExistsError: the parent folder is a file.
        OutputLocationError: two jobs' folders are the same, or one is inside another.
    """
    if isinstance(save_directory, (str, os.PathLike)):
        parent = Path(save_directory)
        if parent.exists() and not parent.is_dir():
            raise OutputExistsError(f"{parent} is a file; with several schemes it is the parent folder of one "
                                    "folder per scheme ({Model}-{SCHEME}). Choose a folder.")
        folders = [parent / default_repo_name(_model_name(job.source), job.scheme_name) for job in jobs]
    else:
        folders = [Path(folder) for folder in save_directory]
        if len(folders) != len(jobs):
            raise InvalidOptionError(f"{len(folders)} output folder(s) for {len(jobs)} job(s): give one per job, "
                                     "or one parent folder.")
    resolved = [folder.resolve() for folder in folders]
    for i, one in enumerate(resolved):
        for other in resolved[i + 1:]:
            if one == other or one in other.parents or other in one.parents:
                raise OutputLocationError(f"Output folders {one} and {other} are the same or nested; give each "
                                          "scheme its own folder.")
    return folders


def _model_name(source: str) -> str:
    """The model's name in folder names: a folder's own name (``.`` resolved), or a repo id's name."""
    path = Path(source).expanduser()
    return path.resolve().name if path.exists() else source.rstrip("/").split("/")[-1]


def quantize_jobs(
    jobs: Sequence[Job],
    save_directory: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    token: str | None = None,
    progress: ProgressCallback | None = None,
) -> QuantizeJobsResult:
    """Quantize one read of a source into several schemes, each into its own local folder.

    Args:
        jobs: ``make_jobs(source, "FP8_BLOCK,NVFP4A16,W4A16", ...)``: one per scheme, one
            source and revision (the first job's ``workers`` and ``device`` run the read).
        save_directory: a parent folder (each scheme in ``{Model}-{SCHEME}`` under it), or
            one folder per job.
        token: for a Hub source.
        progress: as ``quantize_job``'s; ``download`` and ``validate`` are the shared read,
            ``quantize`` and ``write`` are summed over the schemes.

    Returns:
        A :class:`QuantizeJobsResult`; each published folder is byte for byte what
        ``quantize_job`` of that scheme writes.

    Raises:
        InvalidOptionError: the jobs do not share one read (``check_one_read``), or a bad folder list.
        OutputExistsError, OutputLocationError: a folder exists (without ``overwrite``), is a
            file, or is the source; all checked before anything is written.
        DiskSpaceError: the outputs together do not fit.
        the read and quantize errors of ``quantize_job``: no folder is left for any scheme.

    Example:
        >>> quantize_jobs(make_jobs("./Llama-3.2-1B", "FP8_BLOCK,W4A16"), "out")  # doctest: +SKIP
        # out/Llama-3.2-1B-FP8-BLOCK, out/Llama-3.2-1B-W4A16
    """
    start = time.perf_counter()
    jobs = check_one_read(jobs)
    folders = output_folders(jobs, save_directory)
    for job, folder in zip(jobs, folders):
        check_output(folder, overwrite=job.overwrite)
    devices = resolve_devices(jobs[0].device)
    summed = SummedProgress(progress)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    source = resolve_source(jobs[0].source, revision=jobs[0].revision, token=token, progress=summed.of(0))
    timings["download"] = time.perf_counter() - t
    t = time.perf_counter()
    summed.of(0)("validate", 0, 1)
    planned, configs = _plan_all(jobs, source, folders)
    works = _prepare_all(source, planned, folders)
    summed.of(0)("validate", 1, 1)
    timings["validate"] = time.perf_counter() - t
    try:
        t = time.perf_counter()
        reports = _quantize_all(planned, works, summed, devices)
        timings["quantize"] = time.perf_counter() - t
        return _publish_all(planned, configs, works, reports, summed, timings, start)
    except BaseException:
        for work in reversed(works):  # the first made the parent folders: removed last, once empty
            if work.path.exists():
                discard_output(work)
        raise


def _plan_all(jobs: Sequence[Job], source: Path, folders: Sequence[Path]) -> tuple[list[JobPlan], list[dict | None]]:
    """One plan and output config per scheme over one header read; every output checked (source, disk).

    A merged config that cannot load is refused here, not after the read.
    """
    first = plan_job(jobs[0], source)
    planned = [first, *(plan_job(job, source, checkpoint=first.checkpoint) for job in jobs[1:])]
    warn_skipped_files(first.checkpoint)
    configs = [output_config(plan) for plan in planned]
    needed: dict[int, tuple[Path, int]] = {}
    for job, plan, folder in zip(jobs, planned, folders):
        check_output(folder, overwrite=job.overwrite, source=source)
        device = existing_ancestor(folder).stat().st_dev  # the file system the folder will be on
        where, total = needed.get(device, (folder, 0))
        needed[device] = (where, total + output_bytes(source, plan))
    for folder, total in needed.values():  # outputs on one disk share its free space
        check_free_space(folder, total)
    return planned, configs


def _prepare_all(source: Path, planned: Sequence[JobPlan], folders: Sequence[Path]) -> list[OutputWork]:
    """Every scheme's hidden work folder, side files copied; on any failure none is left."""
    works: list[OutputWork] = []
    try:
        for plan, folder in zip(planned, folders):
            works.append(prepare_output(source, folder, overwrite=plan.job.overwrite))
            copy_extra_files(source, works[-1], plan.checkpoint.extra_files)
    except BaseException:
        for work in reversed(works):
            discard_output(work)
        raise
    return works


def _quantize_all(planned: Sequence[JobPlan], works: Sequence[OutputWork], summed: SummedProgress,
                  devices: list[torch.device]) -> list:
    """Every scheme's shards from one read, straight into its work folder; per scheme a report or its error."""
    checkpoint = planned[0].checkpoint
    targets = [FanOutTarget(p.plan, p.plan.shards, work.path, _keep, _nothing, max(1, p.plan.size_after),
                            _local_progress(summed.of(k)), keep=True)
               for k, (p, work) in enumerate(zip(planned, works))]
    logger.info("Quantizing %d of %d tensors into %s from one read, %d worker(s)", len(planned[0].plan.quantized),
                len(planned[0].plan.items), ", ".join(p.job.scheme_name for p in planned), planned[0].job.workers)
    return fan_out_shards(checkpoint, targets, lambda reads: LocalReader(checkpoint), devices=devices,
                          workers=planned[0].job.workers)


def _keep(shard: str, path: Path) -> None:
    """A local output's shard is already where it belongs: nothing to upload."""


def _nothing() -> None:
    """No staging commits fall due in a local run."""


def _local_progress(report: ProgressCallback) -> ProgressCallback:
    """A scheme's fan-out progress as a local run shows it: no ``upload``; ``write`` counts its
    shards and then its index and config.json (one more step, done by ``_publish_all``)."""
    def progress(stage: str, done: int, total: int) -> None:
        if stage != "upload":
            report(stage, done, total + 1 if stage == "write" else total)

    return progress


def _publish_all(planned: Sequence[JobPlan], configs: Sequence[dict | None], works: Sequence[OutputWork], reports: list,
                 summed: SummedProgress, timings: dict[str, float], start: float) -> QuantizeJobsResult:
    """Each scheme's index, config.json and rename; a scheme that fails leaves the others' folders published."""
    failed = [r for r in reports if isinstance(r, BaseException)]
    if len(failed) == len(reports):  # the read or a quantize step: every scheme's, as for one scheme
        raise failed[0]
    results: dict[str, QuantizeResult] = {}
    errors: dict[str, BaseException] = {}
    for k, (p, config, work, report) in enumerate(zip(planned, configs, works, reports)):
        name = p.job.scheme_name
        t = time.perf_counter()
        try:
            if isinstance(report, BaseException):
                raise report
            finish_output(work, p.plan, config)
        except Exception as err:  # noqa: BLE001 - this scheme's folder alone is not published
            discard_output(work)
            errors[name] = err
            logger.error("%s failed: %s", name, err)
            continue
        shards = len(p.plan.shards)
        summed.of(k)("write", shards + 1, shards + 1)
        seconds = time.perf_counter() - start
        results[name] = QuantizeResult(work.save_directory, p.plan, p.plan.size_before, p.plan.size_after, seconds,
                                       {**timings, "write": time.perf_counter() - t})
        logger.info("Wrote %s in %.1f s (%.2fx smaller)", work.save_directory, seconds, p.plan.ratio)
    return QuantizeJobsResult(results, errors)
