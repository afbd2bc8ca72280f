"""Before a Hub job runs: its plan and verdict (``plan_hub_model``), its parts, its default target, model search."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._http import HubHttp, check_repo_id, resolve_token, tool_version
from ..job import Job, check_hub_source, make_job
from ..job_plan import JobPlan, plan_job
from ..parts import fingerprint, job_identity, shard_costs
from ..publish import whoami
from ..schemes import canonical_scheme_name
from ..sizes import format_bytes
from ..source import SourceState, inspect_source
from .request import check_jobs, hub_job, job_from, target_name
from .results import PartsPlan

__all__ = ["default_target_repo", "plan_hub_model", "plan_hub_models", "plan_hub_parts", "plans_to_markdown",
           "search_models"]


def default_target_repo(source: str, scheme: str, *, namespace: str | None = None, token: str | None = None) -> str:
    """The default name of the quantized repo: ``{namespace}/{source-name}-{SCHEME}``.

    Args:
        source: source repo id, e.g. ``meta-llama/Llama-3.2-1B``.
        scheme: scheme name, any case; written in repo-name style (``FP8_BLOCK`` -> ``FP8-BLOCK``).
        namespace: user or organisation; default: the token's user (asks the Hub's ``whoami``).
        token: Hub token; default ``HF_TOKEN``, then the cached login. Only used without ``namespace``.

    Raises:
        InvalidOptionError: ``source``, ``namespace`` or the resulting id is not a valid repo id.
        SchemeNotSupportedError: ``scheme`` is not a preset.
        TokenError: no namespace given and no valid token to ask the Hub who you are.
        HubNetworkError: the Hub could not be reached.

    Example:
        >>> default_target_repo("meta-llama/Llama-3.2-1B", "fp8_block", namespace="me")
        'me/Llama-3.2-1B-FP8-BLOCK'
    """
    check_repo_id(source, "source")
    scheme = canonical_scheme_name(scheme)
    if namespace is None:
        namespace = whoami(HubHttp(resolve_token(token, required=True)))["name"]
    return target_name(source, scheme, namespace)


def plan_hub_model(
    source: Job | str,
    scheme: str | None = None,
    *,
    ignore: tuple[str, ...] | list[str] = (),
    default_ignore: bool = True,
    revision: str | None = None,
    token: str | None = None,
    hub_only: bool = False,
) -> JobPlan:
    """Dry run on a Hub repo from its safetensors headers only (Range reads, no weight bytes).

    The returned :class:`~ptq_core.job_plan.JobPlan` holds the ``plan`` and the ``footprint``
    a streamed job would have: the peak disk (output shards waiting for upload) and RAM,
    next to the budgets of this machine (``PTQ_HUB_CACHE``'s free space, or the job's
    ``disk_budget``), and the verdict the job itself would meet: ``footprint.fits``,
    ``footprint.verdict`` (``quantize_to_hub`` refuses with the same words).

    Args:
        source: a ``Job``, or a source repo id with ``scheme``/``ignore``/``default_ignore``/
            ``revision`` (see ``make_job``: ``ignore`` adds to the loader-safe defaults).
            A local checkpoint folder gives the same plan, read from its files.
        token: Hub token for private or gated repos; public repos need none.
        hub_only: plan a Hub repo id only (``make_job(hub_only=True)``): a path is refused before
            any file-system access, and a local folder is never planned (the Space's previews).

    Raises:
        SchemeNotSupportedError / CalibrationRequiredError / InvalidIgnoreError: before any request.
        InvalidOptionError: an invalid repo id (with ``hub_only``: any source that is not one).
        RepoNotFoundError / GatedRepoError / TokenError: no access to the repo.
        NoSafetensorsError: the repo has no safetensors weights at its root.
        HubNetworkError: the Hub could not be reached after retries.

    Example:
        >>> print(plan_hub_model("meta-llama/Llama-3.2-1B", "NVFP4A16").to_markdown())  # doctest: +SKIP
    """
    options: dict[str, Any] = {"ignore": ignore, "default_ignore": default_ignore, "revision": revision}
    if hub_only and not isinstance(source, Job):
        options["hub_only"] = True  # the source is checked first, before the scheme and the ignore list
    job = job_from(source, scheme, options)
    if hub_only:
        check_hub_source(job.source)  # a Job made without hub_only
    return _plan(job, token, local=not hub_only)


def plan_hub_models(jobs: Sequence[Job], *, token: str | None = None, hub_only: bool = False) -> list[JobPlan]:
    """``plan_hub_model`` of several schemes of one source (``make_jobs``): headers read once, one plan each.

    Raises:
        InvalidOptionError: the jobs do not share source and revision (``many.check_jobs``).
        the errors of ``plan_hub_model``.
    """
    jobs = check_jobs(jobs)
    if hub_only:
        check_hub_source(jobs[0].source)
    first = _plan(jobs[0], token, local=not hub_only)
    source: Path | SourceState = first.source if first.source is not None else Path(jobs[0].source).expanduser()
    http = HubHttp(resolve_token(token, required=False)) if first.source is not None else None
    return [first, *(plan_job(job, source, http=http, checkpoint=first.checkpoint) for job in jobs[1:])]


def plans_to_markdown(plans: Sequence[JobPlan]) -> str:
    """One section per scheme (its tables and footprint), then the one read they share."""
    blocks = [f"## {p.job.scheme_name}\n\n{p.to_markdown()}" for p in plans]
    read = plans[0].plan.size_before
    after = sum(p.plan.size_after for p in plans)
    blocks.append("\n".join([
        "## One read for every scheme", "", "| source read once | schemes | output, all schemes |", "|---:|---:|---:|",
        f"| {format_bytes(read)} | {len(plans)} | {format_bytes(after)} |", ""]))
    return "\n".join(blocks)


def plan_hub_parts(source: Job | str, parts: int, *, token: str | None = None) -> PartsPlan:
    """Split a job into ``parts`` parts of whole output shards, balanced by bytes (``ptq plan --parts``).

    ``source`` is a ``Job`` whose source is a Hub repo id or a local checkpoint folder.

    Raises:
        InvalidOptionError: ``parts`` below 1 or above the number of output shards.
        the errors of ``plan_hub_model`` for a Hub source.
    """
    job = hub_job(source) if isinstance(source, Job) else make_job(source)
    planned = _plan(job, token, local=True, parts=parts)
    costs = shard_costs(planned.plan)
    if planned.source is None:
        return PartsPlan(planned.plan, planned.parts, costs, footprint=planned.footprint)
    identity = job_identity(job, planned.source.sha, tool_version())
    return PartsPlan(planned.plan, planned.parts, costs, planned.source.sha, fingerprint(identity), planned.footprint)


def search_models(query: str, *, limit: int = 20, token: str | None = None) -> list[str]:
    """Model ids on the Hub matching ``query`` (the Space's suggestions).

    Raises:
        HubNetworkError / TokenError: as the other calls; callers treat search as optional.
    """
    http = HubHttp(resolve_token(token, required=False))
    models = http.call(
        "search models", lambda: list(http.api.list_models(search=query, limit=limit)), role="source", repo_id=query
    )
    return [m.id for m in models]


def _plan(job: Job, token: str | None, *, local: bool, parts: int | None = None) -> JobPlan:
    """``plan_job`` of a local checkpoint folder (when ``local`` allows one), else of the pinned Hub repo."""
    folder = Path(job.source).expanduser()
    if local and folder.is_dir():  # the same plan of a local copy: what a streamed job of it would use
        return plan_job(job, folder, parts=parts)
    check_repo_id(job.source, "source")
    http = HubHttp(resolve_token(token, required=False))
    return plan_job(job, inspect_source(http, job.source, job.revision), http=http, parts=parts)
