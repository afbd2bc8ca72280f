"""Hub to Hub: ``quantize_to_hub`` (the one call both front ends make), previews and names.

``quantize_to_hub`` runs in two phases::

    prepare(job): scheme (no network at all), ids, token (whoami), write rights in
                  the target namespace, target state, source access (gated or not),
                  free disk -- everything that can fail before the first weight byte
    run(prepared): download only what the output needs -> quantize (pipeline, once)
                  -> README.md model card -> one commit to the target

The mechanics sit below: ``_http`` (retries, one error mapper, redaction),
``source`` (inspection, download, disk rule) and ``publish`` (identity, target,
the single commit). The per-job folder is removed whether the job succeeds or fails.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import constants
from ._http import HubHttp, check_repo_id, resolve_token, tool_version
from .card import render_model_card
from .checkpoint import headers_checkpoint
from .errors import InvalidOptionError
from .job import Job, make_job
from .pipeline import QuantizeResult, quantize_job
from .plan import Plan, build_plan, source_plan
from .publish import TargetState, check_namespace, inspect_target, push_folder, whoami
from .redact import redact
from .repo_files import select_repo_files
from .schemes import canonical_scheme_name, scheme_repo_suffix
from .sizes import compression_ratio, format_bytes
from .writer import new_work_folder, sweep_stale_work
from .source import (
    ProgressCallback,
    SourceState,
    check_disk_space,
    download_checkpoint,
    download_source,
    inspect_source,
    read_hub_config,
    read_hub_headers,
)

__all__ = [
    "HubResult",
    "PreparedJob",
    "default_target_repo",
    "download_checkpoint",
    "plan_hub_model",
    "prepare_hub_job",
    "quantize_to_hub",
    "redact",
    "resolve_token",
    "run_hub_job",
    "search_models",
    "select_repo_files",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubResult:
    """What ``quantize_to_hub`` made.

    Attributes:
        repo_id: the new repo (``user/Model-FP8-BLOCK``).
        repo_url: its URL on the Hub.
        commit_sha: the one commit holding the checkpoint and the card.
        scheme: the canonical scheme name (``FP8_BLOCK``).
        size_before: bytes of the source safetensors weights.
        size_after: bytes of the quantized safetensors weights.
        ratio: compression ratio ``size_before / size_after`` (2.0 = half the bytes).
        timings: seconds per stage: ``download``, ``quantize``, ``card``, ``upload``, ``total``.
        plan: the pipeline's plan (which tensor got which scheme, what was skipped and why).
        card: the README.md text that was pushed.
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
        rows += [(f"time: {stage}", f"{seconds:.1f} s") for stage, seconds in self.timings.items()]
        lines = ["| | |", "|---|---|", *(f"| {key} | {value} |" for key, value in rows)]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PreparedJob:
    """A job whose every early check passed: identity, target, source and disk are known."""

    job: Job
    http: HubHttp
    target: str
    target_state: TargetState
    source_state: SourceState
    work_root: Path


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
) -> Plan:
    """Dry run on a Hub repo from its safetensors headers only (no weight bytes).

    Args:
        source: a ``Job``, or a source repo id with ``scheme``/``ignore``/``default_ignore``/
            ``revision`` (see ``make_job``: ``ignore`` adds to the loader-safe defaults).
        token: Hub token for private or gated repos; public repos need none.

    Raises:
        SchemeNotSupportedError / CalibrationRequiredError / InvalidIgnoreError: before any request.
        InvalidOptionError: an invalid repo id.
        RepoNotFoundError / GatedRepoError / TokenError: no access to the repo.
        NoSafetensorsError: the repo has no safetensors weights at its root.
        HubNetworkError: the Hub could not be reached after retries.

    Example:
        >>> print(plan_hub_model("meta-llama/Llama-3.2-1B", "NVFP4A16").to_markdown())  # doctest: +SKIP
    """
    if isinstance(source, Job):
        _refuse_options_with_job(scheme, ignore=ignore, default_ignore=not default_ignore, revision=revision)
        job = source
    else:
        job = make_job(source, scheme, ignore=ignore, default_ignore=default_ignore, revision=revision)
    check_repo_id(job.source, "source")
    http = HubHttp(resolve_token(token, required=False))
    checkpoint = headers_checkpoint(read_hub_headers(http, job.source, job.revision))
    return build_plan(checkpoint, job.resolved, source_plan(checkpoint, read_hub_config(http, job.source, job.revision)))


def quantize_to_hub(
    source: Job | str,
    scheme: str | None = None,
    *,
    token: str | None = None,
    progress: ProgressCallback | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> HubResult:
    """Quantize a Hub repo and push the result to a new Hub repo, in one call.

    Args:
        source: a ``Job`` (``make_job``), or a source repo id followed by ``scheme`` and the
            ``make_job`` options as keywords: ``target``, ``private``, ``revision``, ``ignore``
            (adds to the loader-safe defaults), ``default_ignore``, ``device``, ``max_workers``,
            ``overwrite``.
        token: Hub token with write access; default ``HF_TOKEN``, then the cached login.
        progress: ``progress(stage, done, total)``; stages ``download`` (bytes), the
            pipeline's (``validate``, ``quantize``, ``write``), ``card``, ``upload`` (bytes).
        work_dir: where the per-job temporary folder goes; default ``PTQ_HUB_CACHE``.

    Returns:
        A :class:`HubResult`.

    Raises:
        SchemeNotSupportedError / CalibrationRequiredError / InvalidIgnoreError: bad
            scheme or ignore list, before any network request.
        InvalidOptionError: an invalid repo id or option.
        TokenError: no token, or the Hub rejects it.
        RepoNotFoundError: the source (or revision) does not exist or is private to others.
        GatedRepoError: the source is gated and the token's user has no access yet.
        HubPermissionError: the token may not create or write the target repo.
        TargetRepoExistsError: the target has files and ``overwrite`` is false.
        DiskSpaceError: not enough free space in ``work_dir`` for download + output.
        NoSafetensorsError: the source has no safetensors weights.
        HubNetworkError: the Hub could not be reached after retries.
        CheckpointError: the pipeline refused the checkpoint (see ``model_free_ptq``).

    Example:
        >>> result = quantize_to_hub("meta-llama/Llama-3.2-1B", "FP8_BLOCK")  # doctest: +SKIP
        >>> result.repo_url  # doctest: +SKIP
        'https://huggingface.co/alice/Llama-3.2-1B-FP8-BLOCK'
    """
    if isinstance(source, Job):
        _refuse_options_with_job(scheme, **options)
        job = source
    else:
        if "max_workers" in options:
            options["workers"] = options.pop("max_workers")
        job = make_job(source, scheme, **options)
    return run_hub_job(prepare_hub_job(job, token=token, work_dir=work_dir), progress=progress)


def prepare_hub_job(job: Job, *, token: str | None = None, work_dir: str | os.PathLike[str] | None = None) -> PreparedJob:
    """Phase 1: every check that can fail before the first weight byte (see the module doc).

    Raises:
        the errors of ``quantize_to_hub`` except the pipeline's and the push's.
    """
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
    target_state = inspect_target(http, target, overwrite=job.overwrite)
    source_state = inspect_source(http, job.source, job.revision)
    root = Path(work_dir) if work_dir is not None else Path(constants.PTQ_HUB_CACHE)
    root.mkdir(parents=True, exist_ok=True)
    check_disk_space(root, source_state.total_bytes, source_state.weight_bytes)
    return PreparedJob(job, http, target, target_state, source_state, root)


def run_hub_job(prepared: PreparedJob, *, progress: ProgressCallback | None = None) -> HubResult:
    """Phase 2: download, quantize once, write the card, push one commit; clean up always."""
    job, http, target = prepared.job, prepared.http, prepared.target
    report = progress or _no_progress
    stages = _StageTimer()
    sweep_stale_work(prepared.work_root, "job-")
    folder = new_work_folder(prepared.work_root, "job-")
    job_dir = folder.path
    try:
        source_dir, output_dir = job_dir / "source", job_dir / "output"
        with stages("download"):
            download_source(http, prepared.source_state, source_dir, report)
        with stages("quantize"):
            logger.info("Quantizing %s with %s", job.source, job.scheme_name)
            local = replace(job, source=str(source_dir), revision=None)
            result = quantize_job(local, output_dir, progress=progress)
        with stages("card"):
            report("card", 0, 1)
            card = _render_card(prepared, result)
            (output_dir / "README.md").write_text(card, encoding="utf-8")
            report("card", 1, 1)
        with stages("upload"):
            commit_sha = push_folder(
                http,
                target,
                output_dir,
                private=job.private,
                overwrite=job.overwrite,
                target_state=prepared.target_state,
                commit_message=f"Add {job.source} quantized to {job.scheme_name} (ptq-hub {tool_version()})",
                commit_description=_commit_description(prepared, result),
                progress=report,
            )
    finally:
        folder.remove()
    stages.timings["total"] = stages.elapsed()
    logger.info("Pushed %s/%s at commit %s", http.endpoint, target, commit_sha)
    return HubResult(
        repo_id=target,
        repo_url=f"{http.endpoint}/{target}",
        commit_sha=commit_sha,
        scheme=job.scheme_name,
        size_before=result.size_before,
        size_after=result.size_after,
        ratio=compression_ratio(result.size_before, result.size_after),
        timings=stages.timings,
        plan=result.plan,
        card=card,
    )


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


# --- helpers -----------------------------------------------------------------
class _StageTimer:
    """Seconds per stage, recorded by ``with timer("name"):`` blocks, in order."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._started = time.monotonic()

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.timings[stage] = time.monotonic() - t0

    def elapsed(self) -> float:
        return time.monotonic() - self._started


def _refuse_options_with_job(scheme: object, **options: Any) -> None:
    """A ``Job`` already holds every decision: a scheme or an option next to it is a mistake."""
    given = [name for name, value in options.items() if value not in (None, (), [], False)]
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


def _no_progress(stage: str, done: int, total: int) -> None:
    """The default progress callback: nothing to show."""


def _render_card(prepared: PreparedJob, result: QuantizeResult) -> str:
    job = prepared.job
    return render_model_card(
        job.source,
        prepared.target,
        job.scheme_name,
        size_before=result.size_before,
        size_after=result.size_after,
        ignore=list(job.ignore),
        source_card_data=prepared.source_state.card_data,
        revision=prepared.source_state.sha,
        plan=result.plan,
        observer=job.observer,
        tool_version=tool_version(),
        endpoint=prepared.http.endpoint,
    )


def _commit_description(prepared: PreparedJob, result: QuantizeResult) -> str:
    job = prepared.job
    ratio = compression_ratio(result.size_before, result.size_after)
    return (
        f"Quantized {job.source} (revision {prepared.source_state.sha}) to {job.scheme_name} with ptq-hub "
        f"{tool_version()}, data-free.\n\n"
        f"Ignore list: {', '.join(job.ignore) or 'none'}\n"
        f"Size: {format_bytes(result.size_before)} -> {format_bytes(result.size_after)} ({ratio:.2f}x smaller)"
    )
