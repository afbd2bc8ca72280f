"""A Hub job's request: a ``Job`` or a source with options, the Hub's limits on it, the default target name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._http import check_repo_id
from ..errors import InvalidOptionError
from ..job import Job, make_job
from ..one_read import check_one_read
from ..schemes import scheme_repo_suffix

__all__ = ["check_jobs", "hub_job", "job_from", "target_name"]

# make_job's defaults: passing one of these next to a Job says nothing the Job does not already say
_JOB_DEFAULTS: dict[str, object] = {
    "default_ignore": True, "private": False, "overwrite": False, "workers": 1, "max_workers": 1,
}


def job_from(source: Job | str, scheme: str | None, options: dict[str, Any]) -> Job:
    """The ``Job`` of a public call: the one given (nothing next to it), or ``make_job`` of the rest."""
    if isinstance(source, Job):
        _refuse_options_with_job(scheme, **options)
        return hub_job(source)
    if "max_workers" in options:
        options["workers"] = options.pop("max_workers")
    return make_job(source, scheme, **options)


def hub_job(job: Job) -> Job:
    """Hub jobs detect and dequantize quantized sources themselves; converter objects stay local.

    A part may run on another machine (an Action matrix job) and the finalize on a third:
    Python converter objects cannot travel with them, and a merged config would differ.
    """
    if job.converters or job.append:
        raise InvalidOptionError(
            "converters and append are for a local run (model_free_ptq / quantize_job); a Hub job detects the "
            "source's format (FP8 blocks, compressed-tensors, ModelOpt, AWQ) and dequantizes it itself."
        )
    return job


def _refuse_options_with_job(scheme: object, **options: Any) -> None:
    """A ``Job`` already holds every decision: a scheme or an option next to it is a mistake."""
    given = [name for name, value in options.items() if value not in (None, (), []) and value != _JOB_DEFAULTS.get(name)]
    if scheme is not None:
        given.insert(0, "scheme")
    if given:
        raise InvalidOptionError(
            f"Options {', '.join(given)} were given next to a Job; a Job already holds them (see make_job)."
        )


def target_name(source: str, scheme: str, namespace: str) -> str:
    """``{namespace}/{source-name}-{SCHEME}``, checked as a repo id."""
    name = f"{namespace}/{source.split('/')[-1]}-{scheme_repo_suffix(scheme)}"
    check_repo_id(name, "target")
    return name


def check_jobs(jobs: Sequence[Job]) -> tuple[Job, ...]:
    """The Hub jobs of one read (``one_read.check_one_read``), each a Hub job (``hub_job``).

    Raises:
        InvalidOptionError: none, different sources or revisions, a scheme or target twice, a converter.
    """
    return check_one_read(tuple(hub_job(job) for job in jobs))
