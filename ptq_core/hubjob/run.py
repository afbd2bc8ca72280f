"""``quantize_to_hub``: prepare, then stage the job (or its part), then finalize: the one call front ends make."""

from __future__ import annotations

import os
from typing import Any

from ..errors import PtqError
from ..job import Job
from ..source import ProgressCallback
from .finalize import finalize
from .prepare import PreparedJob, prepare_hub_job
from .recovery import done, landed_meanwhile
from .request import job_from
from .results import HubResult, StageClock
from .stage import stage_part

__all__ = ["quantize_to_hub", "run_hub_job"]


def quantize_to_hub(
    source: Job | str,
    scheme: str | None = None,
    *,
    token: str | None = None,
    progress: ProgressCallback | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> HubResult:
    """Quantize a Hub repo and push the result to a new Hub repo, in one call, streamed.

    Args:
        source: a ``Job`` (``make_job``), or a source repo id followed by ``scheme`` and the
            ``make_job`` options as keywords: ``target``, ``private``, ``revision``, ``ignore``
            (adds to the loader-safe defaults), ``default_ignore``, ``device``, ``max_workers``,
            ``overwrite``, ``disk_budget``, ``part``.
        token: Hub token with write access; default ``HF_TOKEN``, then the cached login.
        progress: ``progress(stage, done, total)``; stages ``download`` (bytes), ``validate``,
            ``quantize`` (units), ``write`` (output shards), ``upload`` (bytes), ``stage``
            (shards committed to the staging branch), ``card``, ``commit``. Download,
            quantize and upload run at the same time, so their events interleave.
        work_dir: where the per-job folder (output shards waiting for upload) goes;
            default ``PTQ_HUB_CACHE``.

    Returns:
        A :class:`HubResult`. With ``part=(i, k)``, part ``i`` is staged and ``main`` is
        untouched (``finalize_hub_job`` makes the commit).

    Raises:
        SchemeNotSupportedError / CalibrationRequiredError / InvalidIgnoreError: bad
            scheme or ignore list, before any network request.
        InvalidOptionError: an invalid repo id or option.
        TokenError: no token, or the Hub rejects it.
        RepoNotFoundError: the source (or revision) does not exist or is private to others.
        GatedRepoError: the source is gated and the token's user has no access yet.
        HubPermissionError: the token may not create or write the target repo.
        TargetRepoExistsError: the target has files and ``overwrite`` is false (a target
            holding this very job, finished, is returned instead).
        TargetChangedError: files were committed to the target while the job ran and
            ``overwrite`` is false; the message names them, nothing was overwritten.
        DiskSpaceError: one output shard does not fit the disk budget, or the disk filled up.
        MemoryBudgetError: one tensor (or fused group) needs more memory than the job may use.
        NoSafetensorsError: the source has no safetensors weights.
        SourceChangedError: a source file changed or vanished while the job ran.
        HubNetworkError: the Hub could not be reached after retries.
        CheckpointError: the checkpoint cannot be quantized (see ``model_free_ptq``).
        StagingError: the staging branch holds something this job cannot use.

    Example:
        >>> result = quantize_to_hub("meta-llama/Llama-3.2-1B", "FP8_BLOCK")  # doctest: +SKIP
        >>> result.repo_url  # doctest: +SKIP
        'https://huggingface.co/alice/Llama-3.2-1B-FP8-BLOCK'
    """
    job = job_from(source, scheme, options)
    return run_hub_job(prepare_hub_job(job, token=token, work_dir=work_dir), progress=progress)


def run_hub_job(prepared: PreparedJob, *, progress: ProgressCallback | None = None) -> HubResult:
    """Phase 2: stage this job's part (all of it for a one-machine job), then, unless a part, finalize."""
    clock = StageClock(progress)
    if prepared.finished is not None:
        return done(prepared, prepared.finished, clock)
    index, count = prepared.job.part or (1, 1)
    try:
        staged = stage_part(prepared, index, count, clock)
        if prepared.job.part is not None:
            return prepared.result(staged.head, clock, card="", peak_disk=staged.peak_disk)
        return finalize(prepared, 1, clock, staged=staged)
    except PtqError as err:
        landed = landed_meanwhile(prepared, err)
        if landed is None:
            raise
        return done(prepared, landed, clock, by_other=True)
