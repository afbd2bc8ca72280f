"""After a failure, or a rerun: undo what holds nothing, keep what a rerun resumes from, report a finished job.

A run that fails before anything was staged deletes a repo it created. Once a shard
is staged, the repo and its staging branch are kept, ``main`` untouched, and the error
says that rerunning resumes. A job already on ``main`` (this run's twin won the race,
or it is a rerun) is reported as the finished model.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from ..errors import HubNetworkError, PtqError, TargetChangedError
from ..publish import TargetState, delete_created, inspect_target, new_content
from ..staging import ShardStager, Staging, landed_commit
from .prepare import PreparedJob
from .results import HubResult, StageClock

__all__ = [
    "after_failure",
    "done",
    "landed_meanwhile",
    "recheck_target",
    "refuse_changed",
    "salvage",
]

logger = logging.getLogger(__name__)


def done(prepared: PreparedJob, sha: str, clock: StageClock, *, by_other: bool = False) -> HubResult:
    """The result of a job whose commit is on ``main``: reported as the finished model, whatever the rerun was.

    A staging branch of this job left behind (its deletion failed) is deleted now.
    """
    url = f"{prepared.http.endpoint}/{prepared.target}"
    if by_other:
        logger.warning("Another run of this same job published it first: %s at commit %s. This run's commit was not "
                       "needed; main holds the finished model.", url, sha[:10])
    else:
        logger.info("%s already holds this job at commit %s; nothing to do", url, sha[:10])
    _delete_leftover_branch(prepared)
    return replace(prepared.result(sha, clock, card=""), part=None, branch=None)


def landed_meanwhile(prepared: PreparedJob, err: PtqError) -> str | None:
    """After ``err``: this job's commit on ``main`` made by another run since the target was inspected.

    Not after a network failure: the Hub cannot be asked then, and the final commit
    already read ``main`` after each of its attempts.
    """
    return _published_meanwhile(prepared) if not isinstance(err, HubNetworkError) else None


def _delete_leftover_branch(prepared: PreparedJob) -> None:
    """Best effort: a finished job's branch only clutters the repo."""
    staging = Staging(prepared.http, prepared.target, prepared.fingerprint, prepared.identity)
    if prepared.finished is not None and staging.branch not in prepared.target_state.branches:
        return  # the branches were listed when the target was inspected
    try:
        if staging.head() is None:
            return
        staging.delete()
        logger.info("Deleted the staging branch %s left behind by an earlier run", staging.branch)
    except PtqError as err:
        logger.warning("The staging branch %s of %s could not be deleted: %s", staging.branch, prepared.target, err)


def _published_meanwhile(prepared: PreparedJob) -> str | None:
    http, target = prepared.http, prepared.target
    try:
        if not prepared.target_state.exists and not http.call(
                "check the target repo", http.api.repo_exists, target, role="target", repo_id=target):
            return None
        return landed_commit(http, target, prepared.fingerprint, since=prepared.target_state.head)
    except PtqError:  # cannot tell: the original failure stands
        return None


def recheck_target(prepared: PreparedJob, verified: TargetState) -> TargetState:
    """``main`` moved under the final commit: what is there now, and may the job still commit on it?

    Raises:
        TargetChangedError: files were committed meanwhile and ``overwrite`` is false (names them).
    """
    now = inspect_target(prepared.http, prepared.target)
    added = new_content(now, verified)
    if added and not prepared.job.overwrite:
        refuse_changed(now, verified, prepared.target)
    logger.warning("main of %s moved to %s while the job ran%s; committing on top of it", prepared.target,
                   str(now.head)[:10], f" (replacing {', '.join(added[:5])})" if added else "")
    return now


def refuse_changed(now: TargetState, verified: TargetState, target: str) -> None:
    """Raises: TargetChangedError naming the files committed to ``target`` since ``verified``."""
    added = new_content(now, verified)
    shown = ", ".join(added[:5]) + (", ..." if len(added) > 5 else "")
    raise TargetChangedError(
        f"Files were committed to {target} while this job ran: {shown} (main is now at commit "
        f"{str(now.head)[:10]}). Nothing was overwritten. Pass overwrite=True (--overwrite) to replace them "
        "with the quantized model, or pick another target."
    )


def salvage(stager: ShardStager) -> None:
    """After a failure, commit the shards already uploaded so that a rerun skips them; best effort."""
    try:
        stager.commit()
    except Exception as err:  # noqa: BLE001 - the original failure is what the caller must see
        logger.warning("Could not stage the shards uploaded before the failure: %s", err)


def after_failure(
    err: BaseException, prepared: PreparedJob, staging: Staging, *, created: bool, staged: int, total: int
) -> BaseException:
    """Undo what holds nothing (a created repo), keep what a rerun resumes from, and say which.

    When another run of this same job has published it meanwhile, nothing is undone and
    the error is returned as it is: the caller reports the finished model.
    """
    if isinstance(err, PtqError) and landed_meanwhile(prepared, err) is not None:
        return err
    if staged == 0 and created and not isinstance(err, TargetChangedError) and not _holds_staged_work(staging):
        # (a TargetChangedError: someone else's files are in the repo now; never delete them)
        delete_created(prepared.http, prepared.target)
        return err
    if staged == 0:
        return err
    part = prepared.job.part
    whose = f"part {part[0]}/{part[1]}" if part is not None else "this job"
    note = (
        f"{staged} of {total} output shard(s) of {whose} are staged on branch {staging.branch} of "
        f"{prepared.target} (main is untouched). Rerun the same job to resume: staged shards are not "
        "downloaded, quantized or uploaded again."
    )
    logger.warning("%s", note)
    if isinstance(err, PtqError):
        try:
            return type(err)(f"{err} {note}")
        except TypeError:  # an error class with another constructor: keep it as it is
            return err
    return err


def _holds_staged_work(staging: Staging) -> bool:
    """Whether any staging branch of the repo holds a part manifest (another part may be running)."""
    try:
        return any(staging.manifests(head, branch) for branch, head in staging.branches().items())
    except PtqError:
        return True  # cannot tell: keep the repo
