"""Hub to Hub: ``quantize_to_hub`` (the one call every front end makes), parts, previews and names.

A Hub job is streamed: no input file is ever stored, and the local disk holds
only output shards waiting for upload, within a budget::

    prepare(job): scheme (no network at all), ids, token (whoami), write rights in
                  the target namespace, source access and pinned commit, target
                  state, safetensors headers over Range requests -> plan -> parts,
                  disk and RAM budgets: everything that can fail before the first
                  weight byte
    stage(part):  per output shard of the part: fetch its input ranges ahead
                  (``remote``), quantize (``pipeline``), write it locally, upload it
                  and delete it (``stream``); shards and a part manifest are committed
                  to the staging branch ``ptq-staging-<fingerprint>`` (``staging``)
    finalize(k):  every part present and consistent -> index, config.json, side
                  files, model card -> ONE commit on ``main`` that copies the shards
                  from the branch (no re-upload) -> delete the branch

``quantize_to_hub(job)`` runs all of it in one process (one part of one). With
``job.part = (i, k)`` it stages part ``i`` only (one runner of a GitHub Actions
matrix); ``finalize_hub_job(job, parts=k)`` is the last step.

Failures: a run that fails before anything was staged deletes a repo it created
(as before streaming). Once a shard is staged, the repo and its staging branch
are kept, ``main`` untouched, and the error says that rerunning the same job
resumes: the shards already staged are not downloaded, quantized or uploaded
again. No local file is left behind either way; a work folder of a killed run
(its name carries the pid) is removed by the next run.

The commit on ``main`` names the head the job verified as its parent: files
committed to the target meanwhile stop the job with ``TargetChangedError``
(or, with ``overwrite``, are replaced), never silently. A rerun of a finished
job, in any form, returns its commit; so does a run that lost the race to
another run of the same job.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import constants
from ._http import HubHttp, check_repo_id, resolve_token, tool_version
from .card import render_model_card
from .checkpoint import Checkpoint, open_checkpoint, read_config
from .errors import HubNetworkError, InvalidOptionError, PtqError, TargetChangedError
from .job import Job, check_hub_source, make_job
from .parts import Budgets, estimate_footprint, fingerprint, job_identity, resolve_budgets, shard_costs, split_parts
from .pipeline import resolve_devices
from .plan import Plan
from .planner import plan_model
from .publish import (
    TargetState,
    check_namespace,
    create_target,
    delete_created,
    inspect_target,
    new_content,
    refuse_existing_content,
    whoami,
)
from .redact import redact
from .remote import RemoteReader, open_remote_checkpoint
from .repo_files import select_repo_files
from .schemes import canonical_scheme_name, scheme_repo_suffix
from .sizes import compression_ratio, format_bytes
from .source import ProgressCallback, SourceState, download_checkpoint, inspect_source, read_hub_config
from .staging import (
    MainMovedError,
    Manifest,
    ShardStager,
    Staging,
    finalized_commit,
    landed_commit,
    manifest_path,
    staging_branch,
)
from .stream import StreamReport, stream_shards
from .writer import new_work_folder, sweep_stale_work, write_config, write_index

__all__ = [
    "HubResult",
    "PartsPlan",
    "PreparedJob",
    "default_target_repo",
    "download_checkpoint",
    "finalize_hub_job",
    "plan_hub_model",
    "plan_hub_parts",
    "prepare_hub_job",
    "quantize_to_hub",
    "redact",
    "resolve_token",
    "run_hub_job",
    "search_models",
    "select_repo_files",
]

logger = logging.getLogger(__name__)

STAGE_COMMIT_INTERVAL = 60.0
"""Seconds between two commits of one part to the staging branch (the Hub allows 128 commits an hour).

The first commit also waits this long: a job shorter than that makes no staging commit at all
(a one-machine job's final commit then names every shard by sha256)."""
_RANGE_THREADS = 4
_MAIN_MOVES = 3
"""Times the final commit is tried again on a ``main`` that moved without new content (overwrite, or a no-op)."""
_WORK_PREFIX = "ptq-job-"


@dataclass(frozen=True)
class HubResult:
    """What ``quantize_to_hub`` (or one part, or the finalize step) made.

    Attributes:
        repo_id: the new repo (``user/Model-FP8-BLOCK``).
        repo_url: its URL on the Hub.
        commit_sha: the one commit on ``main`` holding the checkpoint and the card; for a
            part, the head of the staging branch after its shards were staged.
        scheme: the canonical scheme name (``FP8_BLOCK``).
        size_before: bytes of the source safetensors weights.
        size_after: bytes of the quantized safetensors weights.
        ratio: compression ratio ``size_before / size_after`` (2.0 = half the bytes).
        timings: seconds per stage: ``plan``; ``download``, ``quantize``, ``upload`` (they
            overlap: each from its first to its last activity); ``card``, ``commit``; ``total``.
        plan: the plan (which tensor got which scheme, what was skipped and why, footprint).
        card: the README.md text that was pushed ("" for a part).
        part: ``(i, k)`` when only part ``i`` of ``k`` was staged; ``None`` for a finished model.
        branch: the staging branch a part was staged on.
        peak_disk: the most bytes of output shards this run held on local disk at once.
    """

    repo_id: str
    repo_url: str
    commit_sha: str
    scheme: str
    size_before: int
    size_after: int
    ratio: float
    timings: dict[str, float] = field(default_factory=dict)
    plan: Plan | None = None
    card: str = ""
    part: tuple[int, int] | None = None
    branch: str | None = None
    peak_disk: int = 0

    def to_markdown(self) -> str:
        """A Markdown table (repo, scheme, sizes, ratio, time per stage) for job summaries."""
        rows = [
            ("repo", f"[{self.repo_id}]({self.repo_url})"),
            ("scheme", f"`{self.scheme}`"),
            ("size before", format_bytes(self.size_before)),
            ("size after", format_bytes(self.size_after)),
            ("ratio", f"{self.ratio:.2f}x smaller"),
            ("commit", f"`{self.commit_sha[:10]}`" if self.commit_sha else "-"),
        ]
        if self.part is not None:
            rows.append(("part", f"{self.part[0]}/{self.part[1]} staged on branch `{self.branch}`"))
        if self.peak_disk:
            rows.append(("peak disk", format_bytes(self.peak_disk)))
        rows += [(f"time: {stage}", f"{seconds:.1f} s") for stage, seconds in self.timings.items()]
        lines = ["| | |", "|---|---|", *(f"| {key} | {value} |" for key, value in rows)]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PreparedJob:
    """A job whose every early check passed: identity, target, source, plan, parts and budgets are known.

    ``finished`` is the commit of ``main`` that already holds this very job (same
    fingerprint): a part rerun then does nothing, and ``finalize_hub_job`` returns it.
    """

    job: Job
    http: HubHttp
    target: str
    target_state: TargetState
    source_state: SourceState
    work_root: Path
    checkpoint: Checkpoint
    plan: Plan
    budgets: Budgets
    identity: dict[str, Any]
    fingerprint: str
    parts: tuple[tuple[str, ...], ...]
    finished: str | None = None
    plan_seconds: float = 0.0

    @property
    def branch(self) -> str:
        return staging_branch(self.fingerprint)


@dataclass(frozen=True)
class PartsPlan:
    """``ptq plan --parts K``: the output shards of each part, balanced by bytes moved.

    Attributes:
        plan: the job's plan.
        parts: per part, its output shards in plan order.
        costs: per output shard, bytes read plus bytes written.
        revision: the pinned source commit (``None`` for a local folder): pass it to every
            part (``--revision``) so they all quantize the same commit.
        fingerprint: the job's fingerprint (names the staging branch); ``None`` for a folder.
    """

    plan: Plan
    parts: tuple[tuple[str, ...], ...]
    costs: dict[str, int]
    revision: str | None = None
    fingerprint: str | None = None

    def matrix(self) -> dict[str, list[dict[str, Any]]]:
        """A GitHub Actions matrix: ``{"include": [{"part": "1/3", "revision": ..., ...}, ...]}``."""
        k = len(self.parts)
        include = []
        for i, shards in enumerate(self.parts, start=1):
            moved = sum(self.costs[s] for s in shards)
            entry: dict[str, Any] = {"part": f"{i}/{k}", "shards": len(shards), "bytes": moved}
            if self.revision is not None:
                entry["revision"] = self.revision
            include.append(entry)
        return {"include": include}

    def to_markdown(self) -> str:
        k = len(self.parts)
        lines = [f"### Parts: {k}", "", "| part | output shards | bytes moved |", "|---|---:|---:|"]
        for i, shards in enumerate(self.parts, start=1):
            lines.append(f"| {i}/{k} | {len(shards)} | {format_bytes(sum(self.costs[s] for s in shards))} |")
        if self.revision:
            lines += ["", f"source revision: `{self.revision}` (pass `--revision {self.revision}` to every part)"]
        return "\n".join(lines) + "\n"


# --- public API --------------------------------------------------------------
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
    return _target_name(source, scheme, namespace)


def plan_hub_model(
    source: Job | str,
    scheme: str | None = None,
    *,
    ignore: tuple[str, ...] | list[str] = (),
    default_ignore: bool = True,
    revision: str | None = None,
    token: str | None = None,
    hub_only: bool = False,
) -> Plan:
    """Dry run on a Hub repo from its safetensors headers only (Range reads, no weight bytes).

    The plan's ``footprint`` is what a streamed job would use: the peak disk (output
    shards waiting for upload) and RAM, next to the budgets of this machine
    (``PTQ_HUB_CACHE``'s free space, or the job's ``disk_budget``). A peak above its
    budget means the job would be refused.

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
    job = _job_from(source, scheme, options)
    if hub_only:
        check_hub_source(job.source)  # a Job made without hub_only
    folder = Path(job.source).expanduser()
    if not hub_only and folder.is_dir():  # the same plan of a local copy: what a streamed job of it would use
        checkpoint = open_checkpoint(folder)
        plan = plan_model(checkpoint, job.resolved, read_config(folder), tp=job.tp)
    else:
        _state, _checkpoint, plan = _open_hub_plan(job, HubHttp(resolve_token(token, required=False)))
    root = Path(constants.PTQ_HUB_CACHE)
    while not root.exists():  # the cache may not exist yet: its disk is the first existing parent's
        root = root.parent
    budgets = resolve_budgets(plan, job, root, check=False)
    return replace(plan, footprint=estimate_footprint(plan, budgets, split_parts(plan, 1)[0]))


def plan_hub_parts(source: Job | str, parts: int, *, token: str | None = None) -> PartsPlan:
    """Split a job into ``parts`` parts of whole output shards, balanced by bytes (``ptq plan --parts``).

    ``source`` is a ``Job`` whose source is a Hub repo id or a local checkpoint folder.

    Raises:
        InvalidOptionError: ``parts`` below 1 or above the number of output shards.
        the errors of ``plan_hub_model`` for a Hub source.
    """
    job = _hub_job(source) if isinstance(source, Job) else make_job(source)
    if Path(job.source).expanduser().is_dir():
        folder = Path(job.source).expanduser()
        checkpoint = open_checkpoint(folder)
        plan = plan_model(checkpoint, job.resolved, read_config(folder), tp=job.tp)
        return PartsPlan(plan, split_parts(plan, parts), shard_costs(plan))
    state, _checkpoint, plan = _open_hub_plan(job, HubHttp(resolve_token(token, required=False)))
    identity = job_identity(job, state.sha, tool_version())
    return PartsPlan(plan, split_parts(plan, parts), shard_costs(plan), state.sha, fingerprint(identity))


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
    job = _job_from(source, scheme, options)
    return run_hub_job(prepare_hub_job(job, token=token, work_dir=work_dir), progress=progress)


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
    job = _job_from(source, scheme, options)
    if job.part is not None:
        raise InvalidOptionError(f"part={job.part} was given to finalize_hub_job; finalize combines all parts.")
    if not isinstance(parts, int) or isinstance(parts, bool) or parts < 1:
        raise InvalidOptionError(f"parts={parts!r} must be the number of parts the job was split into (>= 1).")
    # Prepared as a part would be: a job that already finished is then returned, not refused.
    prepared = replace(prepare_hub_job(replace(job, part=(parts, parts)), token=token, work_dir=work_dir), job=job)
    clock = _StageClock(progress)
    if prepared.finished is not None:
        return _done(prepared, prepared.finished, clock)
    try:
        return _finalize(prepared, parts, clock)
    except PtqError as err:
        landed = _published_meanwhile(prepared) if _may_be_published(err) else None
        if landed is None:
            raise
        return _done(prepared, landed, clock, by_other=True)


def prepare_hub_job(
    job: Job, *, token: str | None = None, work_dir: str | os.PathLike[str] | None = None
) -> PreparedJob:
    """Phase 1: every check that can fail before the first weight byte (see the module doc).

    Raises:
        the errors of ``quantize_to_hub`` except those of streaming and committing.
    """
    t0 = time.monotonic()
    _hub_job(job)
    check_repo_id(job.source, "source")
    target = job.target
    if target is not None and "/" in target:
        check_repo_id(target, "target")
    http = HubHttp(resolve_token(token, required=True))
    identity = whoami(http)
    if target is None:
        target = _target_name(job.source, job.scheme_name, identity["name"])
    elif "/" not in target:
        target = f"{identity['name']}/{target}"
        check_repo_id(target, "target")
    if target == job.source:
        raise InvalidOptionError(f"target {target!r} is the source repo; pick another name.")
    check_namespace(http, target, identity)
    target_state = inspect_target(http, target)
    source_state = inspect_source(http, job.source, job.revision)
    job_id = job_identity(job, source_state.sha, tool_version())
    fp = fingerprint(job_id)
    finished = None
    if [f for f in target_state.files if f != ".gitattributes"]:
        # a job that already finished is done, however it is rerun (one machine, a part, finalize)
        finished = finalized_commit(http, target, fp)
        if finished is None and not job.overwrite:
            refuse_existing_content(target_state, target)
    checkpoint = open_remote_checkpoint(http, source_state)
    plan = plan_model(checkpoint, job.resolved, read_hub_config(http, job.source, source_state.sha), tp=job.tp)
    root = Path(work_dir) if work_dir is not None else Path(constants.PTQ_HUB_CACHE)
    root.mkdir(parents=True, exist_ok=True)
    sweep_stale_work(root, _WORK_PREFIX)
    k = job.part[1] if job.part is not None else 1
    parts = split_parts(plan, k)
    budgets = resolve_budgets(plan, job, root)
    mine = parts[job.part[0] - 1] if job.part is not None else parts[0]
    plan = replace(plan, footprint=estimate_footprint(plan, budgets, mine))
    return PreparedJob(job, http, target, target_state, source_state, root, checkpoint, plan, budgets, job_id, fp,
                       parts, finished, time.monotonic() - t0)


def run_hub_job(prepared: PreparedJob, *, progress: ProgressCallback | None = None) -> HubResult:
    """Phase 2: stage this job's part (all of it for a one-machine job), then, unless a part, finalize."""
    clock = _StageClock(progress)
    if prepared.finished is not None:
        return _done(prepared, prepared.finished, clock)
    index, count = prepared.job.part or (1, 1)
    try:
        staged = _stage_part(prepared, index, count, clock)
        if prepared.job.part is not None:
            return _result(prepared, staged.head, clock, card="", peak_disk=staged.peak_disk)
        return _finalize(prepared, 1, clock, staged=staged)
    except PtqError as err:
        landed = _published_meanwhile(prepared) if _may_be_published(err) else None
        if landed is None:
            raise
        return _done(prepared, landed, clock, by_other=True)


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


# --- phases ------------------------------------------------------------------
@dataclass
class _Staged:
    """What staging a part left: the branch head, the local disk peak, and what the finalize step needs."""

    head: str
    peak_disk: int = 0
    stager: ShardStager | None = None  # None: the part was already staged, nothing was done
    created: bool = False  # this run created the target repo
    target_state: TargetState | None = None  # the target as verified after creating it (None: not created here)


def _stage_part(prepared: PreparedJob, index: int, count: int, clock: _StageClock) -> _Staged:
    """Stage the output shards of part ``index`` of ``count`` that are not staged yet.

    A part commits its complete manifest last. A one-machine job (no ``job.part``)
    leaves its last uploaded shards uncommitted: its final commit on ``main`` names
    them directly, which saves a commit and reading the manifests back.
    """
    job, http, target = prepared.job, prepared.http, prepared.target
    mine = prepared.parts[index - 1]
    staging = Staging(http, target, prepared.fingerprint, prepared.identity)
    created = False
    work = new_work_folder(prepared.work_root, _WORK_PREFIX)
    job_dir = work.path
    stager: ShardStager | None = None
    reused = 0
    verified: TargetState | None = None
    try:
        if not prepared.target_state.exists:
            created = create_target(http, target, private=job.private)
            # the parent of the final commit: main as it is now (another part may have created the repo)
            verified = inspect_target(http, target)
            if new_content(verified, prepared.target_state) and not job.overwrite:
                _refuse_changed(verified, prepared.target_state, target)
        elif job.private:
            logger.info("Target %s exists; its visibility is left as it is", target)
        head = staging.head()
        manifests = staging.manifests(head) if head is not None else {}
        done = staging.staged(manifests.values())
        mine_done = {s: done[s] for s in mine if s in done}
        reused = len(mine_done)
        previous = manifests.get(manifest_path(index, count))
        if previous is not None and previous.complete and previous.fingerprint == prepared.fingerprint:
            logger.info("Part %d/%d of %s is already staged on %s; nothing to do", index, count, job.source,
                        staging.branch)
            clock("stage", len(mine), len(mine))
            return _Staged(str(head), created=created, target_state=verified)
        if head is None:
            staging.ensure()
        todo = [s for s in mine if s not in mine_done]
        logger.info("Part %d/%d: %d output shard(s) to make, %d already staged on %s", index, count, len(todo),
                    len(mine_done), staging.branch)
        manifest = Manifest(prepared.identity, prepared.fingerprint, index, count, mine, mine_done)

        def on_commit(_new: int) -> None:
            assert stager is not None
            clock("stage", len(stager.manifest.staged), len(mine))

        # K parts commit to one repo at once: each waits K intervals, so the repo sees one a minute.
        stager = ShardStager(staging, manifest, commit_interval=STAGE_COMMIT_INTERVAL * count, on_commit=on_commit)
        peak = 0
        if todo:
            peak = _stream(prepared, todo, job_dir, stager, clock).peak_disk
        else:
            clock("validate", 1, 1)
        if job.part is not None:
            stager.commit()
        return _Staged(str(staging.head()), peak, stager, created, verified)
    except BaseException as err:
        if stager is not None and stager.has_pending:
            _salvage(stager)
        staged = len(stager.manifest.staged) if stager is not None else reused
        new = _after_failure(err, prepared, staging, created=created, staged=staged, total=len(mine))
        if new is err:
            raise
        raise new from err
    finally:
        work.remove()


def _stream(prepared: PreparedJob, todo: list[str], job_dir: Path, stager: ShardStager, clock: _StageClock
            ) -> StreamReport:
    """Make the output shards ``todo``: the remote reader, the stager and the progress wired to ``stream``."""
    downloaded = 0
    total = 0
    lock = threading.Lock()

    def fetched(nbytes: int) -> None:  # called by the range threads
        nonlocal downloaded
        with lock:
            downloaded += nbytes
            now = downloaded
        clock("download", min(now, total), total)

    def open_reader(reads: list[list[tuple[str, int, int]]]) -> RemoteReader:
        nonlocal total
        reader = RemoteReader(prepared.http, prepared.source_state, prepared.checkpoint, reads,
                              window=prepared.budgets.window, threads=_RANGE_THREADS, progress=fetched)
        total = reader.total_bytes
        clock("download", 0, total)
        clock("validate", 1, 1)  # the plan is checked and its reads are laid out
        return reader

    report = stream_shards(
        prepared.plan, prepared.checkpoint, todo, open_reader, job_dir,
        upload=stager.upload, tick=stager.commit_if_due, disk_budget=prepared.budgets.disk,
        devices=resolve_devices(prepared.job.device), workers=prepared.budgets.workers, progress=clock,
    )
    clock("download", total, total)
    return report


def _finalize(prepared: PreparedJob, count: int, clock: _StageClock, *, staged: _Staged | None = None) -> HubResult:
    """All ``count`` parts present and consistent -> the one commit on ``main`` -> branch deleted.

    ``staged``: this process just staged the whole job (one machine); its stager's record
    of what is on the branch, and its uploaded but uncommitted shards, are used as they are.
    """
    stager = staged.stager if staged is not None else None
    peak_disk = staged.peak_disk if staged is not None else 0
    job, http, target, plan, state = prepared.job, prepared.http, prepared.target, prepared.plan, prepared.source_state
    staging = Staging(http, target, prepared.fingerprint, prepared.identity)
    head = staging.head()
    if head is None and stager is None:
        landed = finalized_commit(http, target, prepared.fingerprint) if prepared.target_state.exists else None
        if landed is not None:
            return _result(prepared, landed, clock, card="")
    uploaded = stager.pending() if stager is not None else {}
    if stager is not None:
        committed = set(stager.manifest.staged)
        missing = [s for s in plan.shards if s not in committed and s not in uploaded]
        if missing:  # a bug, never the Hub's state: say so plainly
            raise RuntimeError(f"output shard(s) {missing[:3]} were neither staged nor uploaded")
    else:
        committed = set(staging.check_parts(head, count, plan.shards))
    work = new_work_folder(prepared.work_root, _WORK_PREFIX)
    job_dir = work.path
    try:
        for path in prepared.checkpoint.extra_files:
            http.call(f"download {path}", http.api.hf_hub_download, state.repo_id, path, revision=state.sha,
                      local_dir=job_dir, role="source", repo_id=state.repo_id)
        shutil.rmtree(job_dir / ".cache", ignore_errors=True)
        write_index(job_dir, plan.weight_map(), plan.size_after)
        write_config(job_dir, plan.resolved.quantization_config_dict())
        clock("card", 0, 1)
        card = _render_card(prepared)
        (job_dir / "README.md").write_text(card, encoding="utf-8")
        clock("card", 1, 1)
        files = {p.relative_to(job_dir).as_posix(): p for p in sorted(job_dir.rglob("*")) if p.is_file()
                 and not p.relative_to(job_dir).as_posix().startswith(".")}
        new_paths = set(files) | set(plan.shards)
        verified = staged.target_state if staged is not None and staged.target_state is not None \
            else prepared.target_state
        clock("commit", 0, 1)
        for _ in range(_MAIN_MOVES):
            deletions = [p for p in verified.files if p not in new_paths and p != ".gitattributes"]
            if deletions:
                logger.info("Replacing %d stale file(s) in %s", len(deletions), target)
            try:
                sha = staging.commit_to_main(
                    head, [s for s in plan.shards if s in committed], files, deletions,
                    parent_commit=verified.head,
                    uploaded=[op for op, _ in uploaded.values()],
                    commit_message=f"Add {job.source} quantized to {job.scheme_name} (ptq-hub {tool_version()})",
                    commit_description=_commit_description(prepared),
                )
                break
            except MainMovedError:
                verified = _recheck_target(prepared, verified)
        else:
            raise TargetChangedError(
                f"main of {target} kept moving while this job tried to commit ({_MAIN_MOVES} times); "
                "nothing was overwritten. Rerun the job when nobody else commits to it."
            )
        clock("commit", 1, 1)
    except BaseException as err:
        if stager is not None and uploaded:
            _salvage(stager)
        on_branch = len(stager.manifest.staged) if stager is not None else len(committed)
        new = _after_failure(err, prepared, staging, created=staged is not None and staged.created,
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
    logger.info("Pushed %s/%s at commit %s", http.endpoint, target, sha)
    return _result(prepared, sha, clock, card=card, peak_disk=peak_disk)


# --- helpers -----------------------------------------------------------------
class _StageClock:
    """The progress callback, forwarded, recording when each stage first and last reported."""

    def __init__(self, progress: ProgressCallback | None) -> None:
        self._progress = progress
        self._started = time.monotonic()
        self._spans: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        with self._lock:
            span = self._spans.setdefault(stage, [now, now])
            span[1] = now
            if self._progress is not None:
                self._progress(stage, done, total)

    def timings(self, plan_seconds: float) -> dict[str, float]:
        spans = {s: last - first for s, (first, last) in self._spans.items()
                 if s in ("download", "quantize", "upload", "card", "commit")}
        return {"plan": plan_seconds, **spans, "total": plan_seconds + time.monotonic() - self._started}


def _job_from(source: Job | str, scheme: str | None, options: dict[str, Any]) -> Job:
    if isinstance(source, Job):
        _refuse_options_with_job(scheme, **options)
        return _hub_job(source)
    if "max_workers" in options:
        options["workers"] = options.pop("max_workers")
    return make_job(source, scheme, **options)


def _hub_job(job: Job) -> Job:
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


# make_job's defaults: passing one of these next to a Job says nothing the Job does not already say
_JOB_DEFAULTS: dict[str, object] = {
    "default_ignore": True, "private": False, "overwrite": False, "workers": 1, "max_workers": 1,
}


def _refuse_options_with_job(scheme: object, **options: Any) -> None:
    """A ``Job`` already holds every decision: a scheme or an option next to it is a mistake."""
    given = [name for name, value in options.items() if value not in (None, (), []) and value != _JOB_DEFAULTS.get(name)]
    if scheme is not None:
        given.insert(0, "scheme")
    if given:
        raise InvalidOptionError(
            f"Options {', '.join(given)} were given next to a Job; a Job already holds them (see make_job)."
        )


def _target_name(source: str, scheme: str, namespace: str) -> str:
    name = f"{namespace}/{source.split('/')[-1]}-{scheme_repo_suffix(scheme)}"
    check_repo_id(name, "target")
    return name


def _open_hub_plan(job: Job, http: HubHttp) -> tuple[SourceState, Checkpoint, Plan]:
    """Inspect and pin the source, read its headers over Range requests, plan (no weight bytes)."""
    check_repo_id(job.source, "source")
    state = inspect_source(http, job.source, job.revision)
    checkpoint = open_remote_checkpoint(http, state)
    return state, checkpoint, plan_model(checkpoint, job.resolved, read_hub_config(http, job.source, state.sha), tp=job.tp)


def _render_card(prepared: PreparedJob) -> str:
    job, plan = prepared.job, prepared.plan
    return render_model_card(
        job.source,
        prepared.target,
        job.scheme_name,
        size_before=plan.size_before,
        size_after=plan.size_after,
        ignore=list(plan.resolved.ignore),
        source_card_data=prepared.source_state.card_data,
        revision=prepared.source_state.sha,
        plan=plan,
        observer=job.observer,
        tool_version=tool_version(),
        endpoint=prepared.http.endpoint,
    )


def _commit_description(prepared: PreparedJob) -> str:
    job, plan = prepared.job, prepared.plan
    return (
        f"Quantized {job.source} (revision {prepared.source_state.sha}) to {job.scheme_name} with ptq-hub "
        f"{tool_version()}, data-free.\n\n"
        f"Ignore list: {', '.join(plan.resolved.ignore) or 'none'}\n"
        f"Size: {format_bytes(plan.size_before)} -> {format_bytes(plan.size_after)} ({plan.ratio:.2f}x smaller)"
    )


def _result(prepared: PreparedJob, sha: str, clock: _StageClock, *, card: str, peak_disk: int = 0) -> HubResult:
    plan, http = prepared.plan, prepared.http
    part = prepared.job.part
    return HubResult(
        repo_id=prepared.target,
        repo_url=f"{http.endpoint}/{prepared.target}",
        commit_sha=sha,
        scheme=prepared.job.scheme_name,
        size_before=plan.size_before,
        size_after=plan.size_after,
        ratio=compression_ratio(plan.size_before, plan.size_after),
        timings=clock.timings(prepared.plan_seconds),
        plan=plan,
        card=card,
        part=part,
        branch=prepared.branch if part is not None else None,
        peak_disk=peak_disk,
    )


def _done(prepared: PreparedJob, sha: str, clock: _StageClock, *, by_other: bool = False) -> HubResult:
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
    return replace(_result(prepared, sha, clock, card=""), part=None, branch=None)


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


def _may_be_published(err: BaseException) -> bool:
    """Whether a failure may come from another run of the job publishing it (its branch gone, main moved).

    Not a network failure: the Hub cannot be asked then, and the final commit already
    read ``main`` after each of its attempts.
    """
    return isinstance(err, PtqError) and not isinstance(err, HubNetworkError)


def _published_meanwhile(prepared: PreparedJob) -> str | None:
    """After a failure: this job's commit on ``main`` made by another run since the target was inspected."""
    http, target = prepared.http, prepared.target
    try:
        if not prepared.target_state.exists and not http.call(
                "check the target repo", http.api.repo_exists, target, role="target", repo_id=target):
            return None
        return landed_commit(http, target, prepared.fingerprint, since=prepared.target_state.head)
    except PtqError:  # cannot tell: the original failure stands
        return None


def _recheck_target(prepared: PreparedJob, verified: TargetState) -> TargetState:
    """``main`` moved under the final commit: what is there now, and may the job still commit on it?

    Raises:
        TargetChangedError: files were committed meanwhile and ``overwrite`` is false (names them).
    """
    now = inspect_target(prepared.http, prepared.target)
    added = new_content(now, verified)
    if added and not prepared.job.overwrite:
        _refuse_changed(now, verified, prepared.target)
    logger.warning("main of %s moved to %s while the job ran%s; committing on top of it", prepared.target,
                   str(now.head)[:10], f" (replacing {', '.join(added[:5])})" if added else "")
    return now


def _refuse_changed(now: TargetState, verified: TargetState, target: str) -> None:
    added = new_content(now, verified)
    shown = ", ".join(added[:5]) + (", ..." if len(added) > 5 else "")
    raise TargetChangedError(
        f"Files were committed to {target} while this job ran: {shown} (main is now at commit "
        f"{str(now.head)[:10]}). Nothing was overwritten. Pass overwrite=True (--overwrite) to replace them "
        "with the quantized model, or pick another target."
    )


def _salvage(stager: ShardStager) -> None:
    """After a failure, commit the shards already uploaded so that a rerun skips them; best effort."""
    try:
        stager.commit()
    except Exception as err:  # noqa: BLE001 - the original failure is what the caller must see
        logger.warning("Could not stage the shards uploaded before the failure: %s", err)


def _after_failure(
    err: BaseException, prepared: PreparedJob, staging: Staging, *, created: bool, staged: int, total: int
) -> BaseException:
    """Undo what holds nothing (a created repo), keep what a rerun resumes from, and say which.

    When another run of this same job has published it meanwhile, nothing is undone and
    the error is returned as it is: the caller reports the finished model.
    """
    if _may_be_published(err) and _published_meanwhile(prepared) is not None:
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
