"""The jobs one read of a source can serve: checked together, or grouped out of a longer list.

Several schemes of one source are quantized from one read (``fanout.fan_out_shards``,
for a local output by ``pipeline_many.quantize_jobs``, for the Hub by
``hubjob.many.quantize_many_to_hub``). Those calls take single-scheme ``Job`` values
(``job.make_jobs``); :func:`check_one_read` is the one rule for which of them may share the
read. A recipe lists jobs one by one; :func:`group_by_read` finds those that differ only
in scheme and target, so each group is read once.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import fields

from .errors import InvalidOptionError
from .job import Job

__all__ = ["check_one_read", "group_by_read"]

# What a Job of one read may set for itself: the scheme (and config) in ``resolved``, and its target.
_PER_SCHEME = {"resolved", "target"}


def check_one_read(jobs: Sequence[Job]) -> tuple[Job, ...]:
    """The jobs of one read: at least one, one source, revision and part, each scheme and target once.

    The first job's ``workers``, ``device`` and ``disk_budget`` run the shared read.

    Raises:
        InvalidOptionError: no job, different sources, revisions or parts, a scheme or a target twice.
    """
    jobs = tuple(jobs)
    if not jobs:
        raise InvalidOptionError("No job given: pass the jobs of make_jobs(source, schemes).")
    first = jobs[0]
    for job in jobs[1:]:
        if (job.source, job.revision, job.part) != (first.source, first.revision, first.part):
            raise InvalidOptionError(
                f"The jobs of one read must share source, revision and part: {job.label} has "
                f"{(job.source, job.revision, job.part)}, {first.label} {(first.source, first.revision, first.part)}.")
    for key, what in ((lambda j: j.scheme_name, "scheme"), (lambda j: j.target, "target")):
        values = [key(job) for job in jobs if key(job) is not None]
        if len(values) != len(set(values)):
            raise InvalidOptionError(f"Two jobs of one read have the same {what}; each scheme needs its own.")
    return jobs


def group_by_read(jobs: Sequence[Job]) -> list[tuple[Job, ...]]:
    """``jobs`` grouped for one read each: jobs that differ only in scheme and target share a group.

    Groups come in the order of their first job, and keep their jobs' order. A scheme met
    again with the same options (another target) starts a new group, since one read makes
    each scheme once.

    Example:
        >>> jobs = make_jobs("org/A", "FP8_BLOCK,W4A16") + make_jobs("org/B", "W4A16")  # doctest: +SKIP
        >>> [[j.label for j in g] for g in group_by_read(jobs)]  # doctest: +SKIP
        [['org/A -> FP8_BLOCK', 'org/A -> W4A16'], ['org/B -> W4A16']]
    """
    groups: list[list[Job]] = []
    open_groups: dict[Hashable, list[Job]] = {}
    for job in jobs:
        key = _read_key(job)
        group = open_groups.get(key)
        if group is None or any(j.scheme_name == job.scheme_name for j in group):
            group = open_groups[key] = []
            groups.append(group)
        group.append(job)
    return [tuple(group) for group in groups]


def _read_key(job: Job) -> Hashable:
    """Everything of a job but its scheme and target; the ignore list and observer from ``resolved``."""
    options = tuple((f.name, getattr(job, f.name)) for f in fields(job)
                    if f.name not in _PER_SCHEME and f.name != "converters")
    converters = tuple(id(c) for c in job.converters)  # Converter objects: the same objects, not equal ones
    resolved = job.resolved
    return options, converters, resolved.ignore_entries, resolved.model_defaults, resolved.observer
