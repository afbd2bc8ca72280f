"""Every Hub call: download, header fetch, create/upload/delete, and ``quantize_to_hub``.

This is the only module that talks to the Hub. Both front ends (the GitHub Action
and the Space) make one call here per job::

    source repo --(check access, target, disk)--> download only what the output needs
        --> model_free_ptq (once) --> README.md model card --> one commit to a new repo

Guarantees:

* Everything that can be checked before downloading is: the scheme (no network at
  all), the repo ids, the token (``whoami``), write rights in the target namespace,
  read access to the source (gated or not), whether the target already has files,
  and free disk space.
* Errors are :mod:`ptq_core.errors` classes raised ``from`` the client's error,
  with messages that say what to do. The token never appears in a message or log
  line (messages are redacted defensively).
* The target gets exactly one commit holding the weights, the configs and the
  card. Large files are pre-uploaded one by one (``preupload_lfs_files``, retried
  per file) and then referenced by a single ``create_commit``; ``upload_large_folder``
  is not used because it commits in several steps, which would leave a
  half-filled repo that looks finished if the run broke off. A repo this run
  created is deleted again when anything fails after its creation; an existing
  repo (``overwrite=True``) keeps its old commit until the new one lands whole.
* Transient failures (connection errors, timeouts, HTTP 408/429/5xx) are retried
  with exponential backoff, then raised as :class:`~ptq_core.errors.HubNetworkError`.

Every client is built with ``endpoint=constants.HF_ENDPOINT`` read at call time,
so tests point the whole flow at a loopback server.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import constants
from .errors import (
    DiskSpaceError,
    InvalidOptionError,
    NoSafetensorsError,
    TokenError,
)

from ._hub_client import (
    NO_TOKEN_MESSAGE,
    HubClient,
    ProgressCallback,
    SourceState,
    redact,
    select_repo_files,
    tool_version,
)

if TYPE_CHECKING:  # pragma: no cover
    from .plan import Plan

__all__ = [
    "HubResult",
    "default_target_repo",
    "download_checkpoint",
    "plan_hub_model",
    "quantize_to_hub",
    "redact",
    "search_models",
    "select_repo_files",
]

logger = logging.getLogger(__name__)




# Files of a source repo that the quantized repo needs, besides the safetensors
# weights. Matched on the file name at the repo root; subfolders (``original/``,
# ``onnx/``, ``gguf/``...) hold duplicates of the weights in other formats.


# --- result ------------------------------------------------------------------
@dataclass(frozen=True)
class HubResult:
    """What ``quantize_to_hub`` made.

    Attributes:
        repo_id: the new repo (``user/Model-FP8-BLOCK``).
        repo_url: its URL on the Hub.
        commit_sha: the one commit holding the checkpoint and the card.
        scheme: the scheme name (``FP8_BLOCK``).
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
    plan: Any = None
    card: str = ""

    def to_markdown(self) -> str:
        """A Markdown table (repo, scheme, sizes, ratio, time per stage) for job summaries."""
        from .sizes import format_bytes

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


# --- public API --------------------------------------------------------------
def default_target_repo(source: str, scheme: str, *, namespace: str | None = None, token: str | None = None) -> str:
    """The default name of the quantized repo: ``{namespace}/{source-name}-{SCHEME}``.

    Args:
        source: source repo id, e.g. ``meta-llama/Llama-3.2-1B``.
        scheme: scheme name; written in repo-name style (``FP8_BLOCK`` -> ``FP8-BLOCK``).
        namespace: user or organisation to create the repo under; default: the
            token's user (asks the Hub's ``whoami``).
        token: Hub token; default ``HF_TOKEN``, then the cached login. Only used
            when ``namespace`` is not given.

    Returns:
        The repo id, e.g. ``alice/Llama-3.2-1B-FP8-BLOCK``.

    Raises:
        InvalidOptionError: ``source``, ``namespace`` or the resulting id is not a valid repo id.
        TokenError: no namespace given and no valid token to ask the Hub who you are.
        HubNetworkError: the Hub could not be reached.

    Example:
        >>> default_target_repo("meta-llama/Llama-3.2-1B", "FP8_BLOCK", namespace="me")
        'me/Llama-3.2-1B-FP8-BLOCK'
    """
    _check_repo_id(source, "source")
    if namespace is None:
        token = _resolve_token(token, required=True)
        namespace = HubClient(token).whoami()["name"]
    return _target_name(source, scheme, namespace)


def plan_hub_model(
    repo_id: str,
    scheme: str,
    *,
    ignore: Sequence[str] | None = None,
    revision: str | None = None,
    token: str | None = None,
) -> Plan:
    """Dry run on a Hub repo from its safetensors headers only (no weight bytes).

    Fetches the index (if sharded) and each shard's header with HTTP Range
    requests (``HfApi.get_safetensors_metadata``), then calls
    :func:`ptq_core.plan.plan_checkpoint` with ``headers=``; the plan never
    touches the network.

    Args:
        repo_id: source repo id.
        scheme: scheme name (``FP8_BLOCK``...).
        ignore: ignore list; ``None`` means ``DEFAULT_IGNORE``.
        revision: branch, tag or commit; default the main branch.
        token: Hub token for private or gated repos; default ``HF_TOKEN``, then the
            cached login; public repos need none.

    Returns:
        The ``Plan`` (which tensor gets which scheme, what is skipped and why, sizes).

    Raises:
        SchemeNotSupportedError / CalibrationRequiredError: before any request.
        InvalidOptionError: ``repo_id`` is not a valid repo id.
        RepoNotFoundError / GatedRepoError / TokenError: no access to the repo.
        NoSafetensorsError: the repo has no safetensors weights at its root.
        HubNetworkError: the Hub could not be reached after retries.

    Example:
        >>> plan = plan_hub_model("meta-llama/Llama-3.2-1B", "NVFP4A16")  # doctest: +SKIP
        >>> print(plan.to_markdown())  # doctest: +SKIP
    """
    ignore_list = _ignore_or_default(ignore)
    _resolve_scheme(scheme, ignore_list)
    _check_repo_id(repo_id, "source")
    token = _resolve_token(token, required=False)
    hub = HubClient(token)

    from huggingface_hub.errors import NotASafetensorsRepoError

    try:
        meta = hub.call(
            "read safetensors headers",
            hub.api.get_safetensors_metadata,
            repo_id,
            revision=revision,
            role="source",
            repo_id=repo_id,
        )
    except NotASafetensorsRepoError as err:
        # The client also says "not a safetensors repo" when it cannot see the files at all:
        # ask for the repo itself so a missing, private or gated repo gets its own error.
        hub.call("read the source repo", hub.api.model_info, repo_id, revision=revision, role="source", repo_id=repo_id)
        hub.probe_files(repo_id, revision or "main", ["config.json"])
        raise NoSafetensorsError(
            f"{repo_id} has no model.safetensors or model.safetensors.index.json at its root; "
            "ptq-hub only reads safetensors checkpoints (convert *.bin weights first)."
        ) from err
    headers = {
        filename: {name: (info.dtype, tuple(info.shape)) for name, info in file_meta.tensors.items()}
        for filename, file_meta in meta.files_metadata.items()
    }
    from .plan import plan_checkpoint

    return plan_checkpoint(scheme=scheme, ignore=list(ignore_list), headers=headers)


def quantize_to_hub(
    source: str,
    scheme: str,
    *,
    target: str | None = None,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    ignore: Sequence[str] | None = None,
    device: str | None = None,
    max_workers: int = 1,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    work_dir: str | os.PathLike[str] | None = None,
) -> HubResult:
    """Quantize a Hub repo and push the result to a new Hub repo, in one call.

    Steps: check everything that can fail early (scheme, ids, token, target,
    source access, disk), download only the files the quantized repo needs,
    run ``model_free_ptq`` once, render the model card, push one commit. The
    per-job temporary folder is removed whether the job succeeds or fails.

    Args:
        source: source repo id (``org/Model``).
        scheme: a data-free preset (``FP8_BLOCK``, ``NVFP4A16``, ``W4A16``...).
        target: target repo id; default ``{token user}/{Model}-{SCHEME}``. A bare
            name (no ``/``) goes under the token's user.
        private: create the target repo private (an existing repo keeps its visibility).
        token: Hub token with write access; default ``HF_TOKEN``, then the cached login.
        revision: source branch, tag or commit; default the main branch.
        ignore: modules kept unquantized (exact names or ``re:`` regexes); ``None``
            means ``DEFAULT_IGNORE`` (lm_head, embeddings, MoE routers).
        device: device for the quantize kernels (``"cuda:0"``); default GPU if any.
        max_workers: shards quantized in parallel.
        overwrite: replace the files of an existing, non-empty target repo (one commit
            that also deletes stale files).
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
    started = time.monotonic()
    # 1. Everything checkable without the network.
    ignore_list = _ignore_or_default(ignore)
    scheme_name = _resolve_scheme(scheme, ignore_list)
    _check_repo_id(source, "source")
    if target is not None:
        if not isinstance(target, str) or not target.strip():
            raise InvalidOptionError(f"target={target!r} is not a repo id; give 'namespace/name' or leave it out.")
        target = target.strip()
        _check_repo_id(target, "target")
    if not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 1:
        raise InvalidOptionError(f"max_workers={max_workers!r} must be a whole number >= 1.")
    root = Path(work_dir) if work_dir is not None else Path(constants.PTQ_HUB_CACHE)
    report = _progress_reporter(progress)

    # 2. Who is pushing, and where to.
    token = _resolve_token(token, required=True)
    hub = HubClient(token)
    identity = hub.whoami()
    if target is None:
        target = _target_name(source, scheme_name, identity["name"])
    elif "/" not in target:
        target = f"{identity['name']}/{target}"
        _check_repo_id(target, "target")
    if target == source:
        raise InvalidOptionError(f"target {target!r} is the source repo; pick another name.")
    hub.check_namespace(target, identity)

    # 3. Source access, target state, disk: all before the first weight byte.
    target_state = hub.inspect_target(target, overwrite=overwrite)
    source_state = hub.inspect_source(source, revision)
    root.mkdir(parents=True, exist_ok=True)
    _check_disk_space(root, source_state)

    job_dir = root / f"job-{uuid.uuid4().hex[:12]}"
    timings: dict[str, float] = {}
    try:
        job_dir.mkdir(parents=True)
        source_dir, output_dir = job_dir / "source", job_dir / "output"

        t0 = time.monotonic()
        hub.download(source, source_state, source_dir, report)
        timings["download"] = time.monotonic() - t0

        t0 = time.monotonic()
        from .pipeline import model_free_ptq

        logger.info("Quantizing %s with %s", source, scheme_name)
        result = model_free_ptq(
            str(source_dir),
            str(output_dir),
            scheme=scheme_name,
            ignore=list(ignore_list),
            max_workers=max_workers,
            device=device,
            progress=progress,
        )
        timings["quantize"] = time.monotonic() - t0

        t0 = time.monotonic()
        report("card", 0, 1)
        card = _render_card(
            source=source,
            target=target,
            scheme=scheme_name,
            ignore=ignore_list,
            result=result,
            source_state=source_state,
        )
        (output_dir / "README.md").write_text(card, encoding="utf-8")
        report("card", 1, 1)
        timings["card"] = time.monotonic() - t0

        t0 = time.monotonic()
        commit_sha = hub.push(
            target,
            output_dir,
            private=private,
            overwrite=overwrite,
            target_state=target_state,
            commit_message=f"Add {source} quantized to {scheme_name} (ptq-hub {tool_version()})",
            commit_description=_commit_description(source, source_state, scheme_name, ignore_list, result),
            report=report,
        )
        timings["upload"] = time.monotonic() - t0
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)
    timings["total"] = time.monotonic() - started

    from .sizes import compression_ratio

    endpoint = constants.HF_ENDPOINT.rstrip("/")
    logger.info("Pushed %s/%s at commit %s", endpoint, target, commit_sha)
    return HubResult(
        repo_id=target,
        repo_url=f"{endpoint}/{target}",
        commit_sha=commit_sha,
        scheme=scheme_name,
        size_before=int(result.size_before),
        size_after=int(result.size_after),
        ratio=compression_ratio(int(result.size_before), int(result.size_after)),
        timings=timings,
        plan=result.plan,
        card=card,
    )


def download_checkpoint(
    repo_id: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    progress: ProgressCallback | None = None,
    local_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Download the files a quantized copy needs (see ``select_repo_files``) into a folder.

    This is what ``model_free_ptq`` does with a Hub id. The folder defaults to
    ``PTQ_HUB_CACHE/models/{org}--{name}/{commit}``, so a second run reuses it.

    Raises:
        RepoNotFoundError / GatedRepoError / TokenError / HubNetworkError: as ``quantize_to_hub``.
        NoSafetensorsError: the repo has no safetensors weights.
        DiskSpaceError: the files do not fit.
    """
    _check_repo_id(repo_id, "source")
    hub = HubClient(_resolve_token(token, required=False))
    state = hub.inspect_source(repo_id, revision)
    root = Path(local_dir) if local_dir is not None else (
        Path(constants.PTQ_HUB_CACHE) / "models" / repo_id.replace("/", "--") / state.sha
    )
    root.mkdir(parents=True, exist_ok=True)
    _check_disk_space(root, state)
    hub.download(repo_id, state, root, _progress_reporter(progress))
    return root


def search_models(query: str, *, limit: int = 20, token: str | None = None) -> list[str]:
    """Model ids on the Hub matching ``query`` (the Space's suggestions).

    Raises:
        HubNetworkError / TokenError: as the other calls; callers treat search as optional.
    """
    hub = HubClient(_resolve_token(token, required=False))
    models = hub.call(
        "search models", lambda: list(hub.api.list_models(search=query, limit=limit)), role="source", repo_id=query
    )
    return [m.id for m in models]




# --- the client, with retries and typed errors -------------------------------






# --- helpers -----------------------------------------------------------------




def _resolve_token(token: str | None, *, required: bool) -> str | None:
    """Argument, else ``HF_TOKEN``, else the cached login (``hf auth login``)."""
    if token is not None and not isinstance(token, str):
        raise TokenError(f"token must be a string, not {type(token).__name__}.")
    if token is not None and token.strip():
        return token.strip()
    token = constants.hf_token_from_env()
    if token is None:
        from huggingface_hub import get_token

        token = get_token()
    if token is None and required:
        raise TokenError(NO_TOKEN_MESSAGE)
    return token


def _check_repo_id(repo_id: Any, what: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(repo_id, str) or not repo_id:
        raise InvalidOptionError(f"The {what} repo id must be a non-empty string like 'org/Model', got {repo_id!r}.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise InvalidOptionError(f"{repo_id!r} is not a valid {what} repo id: {err}") from err
    if what == "source" and "/" not in repo_id:
        raise InvalidOptionError(f"The source repo id {repo_id!r} needs its namespace: 'org/{repo_id}'.")


def _target_name(source: str, scheme: str, namespace: str) -> str:
    from .schemes import scheme_repo_suffix

    name = f"{namespace}/{source.split('/')[-1]}-{scheme_repo_suffix(scheme)}"
    _check_repo_id(name, "target")
    return name


def _ignore_or_default(ignore: Sequence[str] | None) -> tuple[str, ...]:
    if ignore is None:
        from .schemes import DEFAULT_IGNORE

        return tuple(DEFAULT_IGNORE)
    if isinstance(ignore, str):
        raise InvalidOptionError(f"ignore must be a list of names or 're:' patterns, not the string {ignore!r}.")
    return tuple(ignore)


def _resolve_scheme(scheme: str, ignore: Sequence[str]) -> str:
    """Validate the scheme and ignore list with no network; return the display name."""
    from .schemes import resolve_config

    resolved = resolve_config(scheme=scheme, ignore=list(ignore))
    return scheme.strip().upper() if isinstance(scheme, str) else resolved.name


def _check_disk_space(root: Path, state: SourceState) -> None:
    """Refuse when download + output do not fit; the output is at most the weights' size."""
    download = state.total_bytes
    output = state.weight_bytes
    needed = download + output
    free = shutil.disk_usage(root).free
    if needed > free:
        from .sizes import format_bytes

        raise DiskSpaceError(
            f"Not enough free disk space in {root}: the job needs about {format_bytes(needed)} "
            f"({format_bytes(download)} download + {format_bytes(output)} output), only {format_bytes(free)} "
            "is free. Free some space or pass work_dir= on a larger disk."
        )
















def _progress_reporter(progress: ProgressCallback | None) -> ProgressCallback:
    def report(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress(stage, done, total)

    return report


def _render_card(
    *, source: str, target: str, scheme: str, ignore: Sequence[str], result: Any, source_state: SourceState
) -> str:
    from .card import render_model_card

    return render_model_card(
        source,
        target,
        scheme,
        size_before=int(result.size_before),
        size_after=int(result.size_after),
        ignore=list(ignore),
        source_card_data=source_state.card_data,
        revision=source_state.sha,
        plan=result.plan,
        tool_version=tool_version(),
        endpoint=constants.HF_ENDPOINT,
    )


def _commit_description(source: str, state: SourceState, scheme: str, ignore: Sequence[str], result: Any) -> str:
    from .sizes import compression_ratio, format_bytes

    ratio = compression_ratio(int(result.size_before), int(result.size_after))
    return (
        f"Quantized {source} (revision {state.sha}) to {scheme} with ptq-hub {tool_version()}, data-free.\n\n"
        f"Ignore list: {', '.join(ignore) or 'none'}\n"
        f"Size: {format_bytes(int(result.size_before))} -> {format_bytes(int(result.size_after))} "
        f"({ratio:.2f}x smaller)"
    )


