"""Phase 1 of a Hub job: every check that can fail before the first weight byte, and the one plan.

In order: the source id, the token's user (``whoami``), the target's name and the
user's rights on its namespace, the target's state, the source pinned to a commit
(its ``config.json`` read once, as the access probe), a finished job recognised by
its fingerprint, then ``plan_job`` (headers over Range requests) and its verdict
(``footprint.check()``: the disk and RAM budgets).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import constants
from .._http import HubHttp, check_repo_id, resolve_token, tool_version
from ..errors import InvalidOptionError
from ..job import Job
from ..job_plan import JobPlan, plan_job
from ..parts import fingerprint, job_identity
from ..publish import TargetState, check_namespace, inspect_target, refuse_existing_content, whoami
from ..sizes import compression_ratio
from ..source import inspect_source
from ..staging import finalized_commit, staging_branch
from ..work_folders import sweep_stale_work
from .request import hub_job, target_name
from .results import HubResult, StageClock

__all__ = ["WORK_PREFIX", "PreparedJob", "prepare_hub_job", "prepare_parts"]

logger = logging.getLogger(__name__)

WORK_PREFIX = "ptq-job-"


@dataclass(frozen=True)
class PreparedJob:
    """A job whose every early check passed: identity, target, source, plan, parts and budgets are known.

    ``planned`` holds the plan, the checkpoint, the budgets, the parts and the pinned
    source (``planned.source``). ``finished`` is the commit of ``main`` that already holds
    this very job (same fingerprint): a part rerun then does nothing, and
    ``finalize_hub_job`` returns it.
    """

    job: Job
    http: HubHttp
    target: str
    target_state: TargetState
    planned: JobPlan
    work_root: Path
    identity: dict[str, Any]
    fingerprint: str
    finished: str | None = None
    plan_seconds: float = 0.0

    @property
    def branch(self) -> str:
        return staging_branch(self.fingerprint)

    def result(self, sha: str, clock: StageClock, *, card: str, peak_disk: int = 0) -> HubResult:
        """The :class:`HubResult` of this job at commit ``sha`` (of its part's branch, for a part)."""
        plan, part = self.planned.plan, self.job.part
        return HubResult(
            repo_id=self.target, repo_url=f"{self.http.endpoint}/{self.target}", commit_sha=sha,
            scheme=self.job.scheme_name, size_before=plan.size_before, size_after=plan.size_after,
            ratio=compression_ratio(plan.size_before, plan.size_after), timings=clock.timings(self.plan_seconds),
            plan=plan, card=card, part=part, branch=self.branch if part is not None else None, peak_disk=peak_disk,
            footprint=self.planned.footprint,
        )


def prepare_hub_job(
    job: Job, *, token: str | None = None, work_dir: str | os.PathLike[str] | None = None
) -> PreparedJob:
    """Phase 1: every check that can fail before the first weight byte (see the module doc).

    Raises:
        the errors of ``quantize_to_hub`` except those of streaming and committing.
    """
    return prepare_parts(hub_job(job), job.part[1] if job.part is not None else 1, token=token, work_dir=work_dir)


def prepare_parts(
    job: Job, parts: int, *, token: str | None = None, work_dir: str | os.PathLike[str] | None = None,
    pinned: PreparedJob | None = None,
) -> PreparedJob:
    """``prepare_hub_job`` of a job cut into ``parts`` parts (the finalize step's, whose job names no part).

    ``job`` passed ``request.hub_job`` (``job_from`` does that). ``pinned``: another scheme
    of the same source, prepared: its pinned commit, ``config.json`` and headers are reused
    (one read of the source for several schemes), not asked again.
    """
    t0 = time.monotonic()
    check_repo_id(job.source, "source")
    if job.target is not None and "/" in job.target:
        check_repo_id(job.target, "target")
    http = HubHttp(resolve_token(token, required=True))
    user = whoami(http)
    target = _target(job, user["name"])
    check_namespace(http, target, user)
    target_state = inspect_target(http, target)
    source_state = pinned.planned.source if pinned is not None else None
    if source_state is None:
        source_state = inspect_source(http, job.source, job.revision)
    identity = job_identity(job, source_state.sha, tool_version())
    fp = fingerprint(identity)
    finished = None
    if [f for f in target_state.files if f != ".gitattributes"]:
        # a job that already finished is done, however it is rerun (one machine, a part, finalize)
        finished = finalized_commit(http, target, fp)
        if finished is None and not job.overwrite:
            refuse_existing_content(target_state, target)
    root = Path(work_dir) if work_dir is not None else Path(constants.PTQ_HUB_CACHE)
    root.mkdir(parents=True, exist_ok=True)
    sweep_stale_work(root, WORK_PREFIX)
    planned = plan_job(job, source_state, http=http, work_root=root, parts=parts,
                       checkpoint=pinned.planned.checkpoint if pinned is not None else None)
    planned.footprint.check()
    return PreparedJob(job, http, target, target_state, planned, root, identity, fp, finished, time.monotonic() - t0)


def _target(job: Job, user: str) -> str:
    """The target repo id: the job's, in the user's namespace when it names none, or the default name."""
    if job.target is None:
        target = target_name(job.source, job.scheme_name, user)
    elif "/" not in job.target:
        target = f"{user}/{job.target}"
        check_repo_id(target, "target")
    else:
        target = job.target
    if target == job.source:
        raise InvalidOptionError(f"target {target!r} is the source repo; pick another name.")
    return target
