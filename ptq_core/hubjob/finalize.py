"""Phase 3 of a Hub job: every part present and consistent -> ONE commit on ``main`` -> staging branch deleted.

The commit copies the shards from the staging branch (no re-upload), and adds the
index, ``config.json`` (the source's, read once at inspection, with the new
``quantization_config``), the side files and the model card. It names the head of
``main`` the job verified as its parent: files committed meanwhile stop the job with
``TargetChangedError`` (or, with ``overwrite``, are replaced), never silently.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from .._http import tool_version
from ..card import render_model_card
from ..errors import InvalidOptionError, PtqError, TargetChangedError
from ..job import Job
from ..publish import TargetState
from ..sizes import format_bytes
from ..source import ProgressCallback
from ..staging import MainMovedError, Staging, finalized_commit
from ..convert import model_config_update
from ..work_folders import new_work_folder
from ..writer import write_config, write_index
from .prepare import WORK_PREFIX, PreparedJob, prepare_parts
from .recovery import after_failure, done, landed_meanwhile, recheck_target, salvage
from .request import job_from
from .results import HubResult, StageClock
from .stage import Staged

__all__ = ["finalize", "finalize_hub_job"]

logger = logging.getLogger(__name__)

_MAIN_MOVES = 3
"""Times the final commit is tried again on a ``main`` that moved without new content (overwrite, or a no-op)."""


def finalize_hub_job(
    source: Job | str,
    scheme: str | None = None,
    *,
    parts: int,
    token: str | None = None,
    progress: ProgressCallback | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> HubResult:
    """The last step of a multi-part job: check all ``parts`` parts, then make the one commit on ``main``.

    Takes the same job as the parts (same source, revision, scheme, ignore list,
    target); a rerun after success returns the existing commit.

    Raises:
        MissingPartError: a part is not staged, or not completely (the message names it).
        PartMismatchError: a part was staged with another source revision, scheme, ignore
            list, observer or tool version (the message names the part and the differences).
        the errors of ``quantize_to_hub`` before staging.
    """
    job = job_from(source, scheme, options)
    if job.part is not None:
        raise InvalidOptionError(f"part={job.part} was given to finalize_hub_job; finalize combines all parts.")
    if not isinstance(parts, int) or isinstance(parts, bool) or parts < 1:
        raise InvalidOptionError(f"parts={parts!r} must be the number of parts the job was split into (>= 1).")
    prepared = prepare_parts(job, parts, token=token, work_dir=work_dir)
    clock = StageClock(progress)
    if prepared.finished is not None:
        return done(prepared, prepared.finished, clock)
    try:
        return finalize(prepared, parts, clock)
    except PtqError as err:
        landed = landed_meanwhile(prepared, err)
        if landed is None:
            raise
        return done(prepared, landed, clock, by_other=True)


def finalize(prepared: PreparedJob, count: int, clock: StageClock, *, staged: Staged | None = None) -> HubResult:
    """All ``count`` parts present and consistent -> the one commit on ``main`` -> branch deleted.

    ``staged``: this process just staged the whole job (one machine); its stager's record
    of what is on the branch, and its uploaded but uncommitted shards, are used as they are.
    """
    stager = staged.stager if staged is not None else None
    plan, target = prepared.planned.plan, prepared.target
    staging = Staging(prepared.http, target, prepared.fingerprint, prepared.identity)
    head = staging.head()
    if head is None and stager is None:
        landed = finalized_commit(prepared.http, target, prepared.fingerprint) if prepared.target_state.exists else None
        if landed is not None:
            return prepared.result(landed, clock, card="")
    uploaded = stager.pending() if stager is not None else {}
    if stager is not None:
        committed = set(stager.manifest.staged)
        missing = [s for s in plan.shards if s not in committed and s not in uploaded]
        if missing:  # a bug, never the Hub's state: say so plainly
            raise RuntimeError(f"output shard(s) {missing[:3]} were neither staged nor uploaded")
    else:
        committed = set(staging.check_parts(head, count, plan.shards))
    work = new_work_folder(prepared.work_root, WORK_PREFIX)
    try:
        files, card = _write_files(prepared, work.path, clock)
        verified = staged.target_state if staged is not None and staged.target_state is not None \
            else prepared.target_state
        clock("commit", 0, 1)
        sha = _commit_to_main(prepared, staging, head, [s for s in plan.shards if s in committed], files,
                              [op for op, _ in uploaded.values()], verified)
        clock("commit", 1, 1)
    except BaseException as err:
        if stager is not None and uploaded:
            salvage(stager)
        on_branch = len(stager.manifest.staged) if stager is not None else len(committed)
        new = after_failure(err, prepared, staging, created=staged is not None and staged.created,
                            staged=on_branch, total=len(plan.shards))
        if new is err:
            raise
        raise new from err
    finally:
        work.remove()
    try:
        staging.delete()
    except PtqError as err:  # main is complete; a leftover branch is only clutter
        logger.warning("The model is on main, but the staging branch %s could not be deleted: %s", staging.branch, err)
    logger.info("Pushed %s/%s at commit %s", prepared.http.endpoint, target, sha)
    return prepared.result(sha, clock, card=card, peak_disk=staged.peak_disk if staged is not None else 0)


def _write_files(prepared: PreparedJob, job_dir: Path, clock: StageClock) -> tuple[dict[str, Path], str]:
    """The side files, index, config.json and card in ``job_dir``: (repo path -> local file, the card)."""
    http, state, plan = prepared.http, prepared.planned.source, prepared.planned.plan
    for path in prepared.planned.checkpoint.extra_files:
        if path == "config.json" and state.config is not None:  # read at inspection: not downloaded again
            (job_dir / path).write_text(json.dumps(state.config), encoding="utf-8")
            continue
        http.call(f"download {path}", http.api.hf_hub_download, state.repo_id, path, revision=state.sha,
                  local_dir=job_dir, role="source", repo_id=state.repo_id)
    shutil.rmtree(job_dir / ".cache", ignore_errors=True)
    write_index(job_dir, plan.weight_map(), plan.size_after)
    write_config(job_dir, plan.resolved.quantization_config_dict(), model_config_update(plan.source.converters))
    clock("card", 0, 1)
    card = _render_card(prepared)
    (job_dir / "README.md").write_text(card, encoding="utf-8")
    clock("card", 1, 1)
    files = {p.relative_to(job_dir).as_posix(): p for p in sorted(job_dir.rglob("*")) if p.is_file()
             and not p.relative_to(job_dir).as_posix().startswith(".")}
    return files, card


def _commit_to_main(
    prepared: PreparedJob, staging: Staging, head: str | None, on_branch: list[str], files: dict[str, Path],
    uploaded: list[Any], verified: TargetState,
) -> str:
    """The one commit on ``main``, on the head the job verified; again on a head that moved without new content.

    Raises:
        TargetChangedError: ``main`` gained files meanwhile (without ``overwrite``), or kept moving.
    """
    job, plan, target = prepared.job, prepared.planned.plan, prepared.target
    new_paths = set(files) | set(plan.shards)
    for _ in range(_MAIN_MOVES):
        deletions = [p for p in verified.files if p not in new_paths and p != ".gitattributes"]
        if deletions:
            logger.info("Replacing %d stale file(s) in %s", len(deletions), target)
        try:
            return staging.commit_to_main(
                head, on_branch, files, deletions, parent_commit=verified.head, uploaded=uploaded,
                commit_message=f"Add {job.source} quantized to {job.scheme_name} (ptq-hub {tool_version()})",
                commit_description=_commit_description(prepared),
            )
        except MainMovedError:
            verified = recheck_target(prepared, verified)
    raise TargetChangedError(
        f"main of {target} kept moving while this job tried to commit ({_MAIN_MOVES} times); "
        "nothing was overwritten. Rerun the job when nobody else commits to it."
    )


def _render_card(prepared: PreparedJob) -> str:
    job, plan = prepared.job, prepared.planned.plan
    return render_model_card(
        job.source,
        prepared.target,
        job.scheme_name,
        size_before=plan.size_before,
        size_after=plan.size_after,
        ignore=list(plan.resolved.ignore),
        source_card_data=prepared.planned.source.card_data,
        revision=prepared.planned.source.sha,
        plan=plan,
        observer=job.observer,
        tool_version=tool_version(),
        endpoint=prepared.http.endpoint,
    )


def _commit_description(prepared: PreparedJob) -> str:
    job, plan = prepared.job, prepared.planned.plan
    return (
        f"Quantized {job.source} (revision {prepared.planned.source.sha}) to {job.scheme_name} with ptq-hub "
        f"{tool_version()}, data-free.\n\n"
        f"Ignore list: {', '.join(plan.resolved.ignore) or 'none'}\n"
        f"Size: {format_bytes(plan.size_before)} -> {format_bytes(plan.size_after)} ({plan.ratio:.2f}x smaller)"
    )
