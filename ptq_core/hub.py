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

import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

from . import constants
from .errors import (
    DiskSpaceError,
    GatedRepoError,
    HubError,
    HubNetworkError,
    HubPermissionError,
    InvalidOptionError,
    NoSafetensorsError,
    PtqError,
    RepoNotFoundError,
    TargetRepoExistsError,
    TokenError,
)

if TYPE_CHECKING:  # pragma: no cover
    from huggingface_hub import HfApi

    from .plan import Plan

__all__ = [
    "HubResult",
    "default_target_repo",
    "download_checkpoint",
    "plan_hub_model",
    "quantize_to_hub",
    "search_models",
    "select_repo_files",
]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, int], None]
_T = TypeVar("_T")

_RETRY_DELAYS: tuple[float, ...] = (1.0, 2.0, 4.0)
"""Seconds to wait before each retry of a transient Hub failure (3 retries, 4 attempts)."""

_DOWNLOAD_WORKERS = 8
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})

# Files of a source repo that the quantized repo needs, besides the safetensors
# weights. Matched on the file name at the repo root; subfolders (``original/``,
# ``onnx/``, ``gguf/``...) hold duplicates of the weights in other formats.
_SIDE_FILE_NAMES = frozenset(
    {
        "tokenizer.model",  # sentencepiece
        "spiece.model",
        "vocab.txt",
        "merges.txt",
    }
)
_SIDE_FILE_SUFFIXES = (".json", ".jinja", ".py", ".tiktoken", ".txt", ".model")
_LICENSE_PREFIXES = ("license", "licence", "notice", "use_policy", "copying")
_NEVER = frozenset({"readme.md", ".gitattributes", "pytorch_model.bin.index.json", "tf_model.h5"})


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
        namespace = _Hub(token).whoami()["name"]
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
    hub = _Hub(token)

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
    hub = _Hub(token)
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
            commit_message=f"Add {source} quantized to {scheme_name} (ptq-hub {_version()})",
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
    hub = _Hub(_resolve_token(token, required=False))
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
    hub = _Hub(_resolve_token(token, required=False))
    models = hub.call(
        "search models", lambda: list(hub.api.list_models(search=query, limit=limit)), role="source", repo_id=query
    )
    return [m.id for m in models]


def select_repo_files(paths: Iterable[str]) -> list[str]:
    """The files of a source repo that the quantized repo needs, in sorted order.

    Kept: ``*.safetensors`` and their index, config and generation config,
    tokenizer files, chat templates, custom code (``*.py``), license/notice files,
    all at the repo root. Left out: other weight formats (``*.bin``, ``*.pt``,
    ``*.gguf``, ``*.onnx``...), subfolders (``original/`` and other duplicates),
    the source README (the new repo gets its own card) and hidden files.

    Example:
        >>> select_repo_files(["model.safetensors", "pytorch_model.bin", "config.json", "original/x.pth"])
        ['config.json', 'model.safetensors']
    """
    keep = []
    for path in paths:
        name = PurePosixPath(path).name
        lower = name.lower()
        if "/" in path or name.startswith(".") or lower in _NEVER:
            continue
        if lower.endswith(constants.WEIGHT_FILE_SUFFIXES):
            continue
        if (
            lower.endswith(".safetensors")
            or lower in _SIDE_FILE_NAMES
            or lower.endswith(_SIDE_FILE_SUFFIXES)
            or lower.startswith(_LICENSE_PREFIXES)
        ):
            keep.append(path)
    return sorted(keep)


# --- the client, with retries and typed errors -------------------------------
@dataclass
class _SourceState:
    repo_id: str
    revision: str | None
    sha: str
    files: dict[str, int]  # path -> bytes
    card_data: dict[str, Any]

    @property
    def weight_bytes(self) -> int:
        return sum(size for path, size in self.files.items() if path.endswith(".safetensors"))

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())


@dataclass
class _TargetState:
    exists: bool
    files: list[str]


class _Hub:
    """One token, one endpoint; every call retried and its errors translated."""

    def __init__(self, token: str | None) -> None:
        from huggingface_hub import HfApi

        self.token = token
        self.endpoint = constants.HF_ENDPOINT.rstrip("/")
        self.api: HfApi = HfApi(
            endpoint=self.endpoint,
            token=token if token else False,
            library_name="ptq-hub",
            library_version=_version(),
        )
        self.user: str | None = None

    # calls ----------------------------------------------------------------
    def call(
        self,
        what: str,
        fn: Callable[..., _T],
        *args: Any,
        role: str,
        repo_id: str,
        **kwargs: Any,
    ) -> _T:
        """``fn(*args, **kwargs)`` with retries on transient failures and typed errors.

        ``role`` is ``"source"`` or ``"target"``: a 403 on the source means gated or
        private, on the target it means no write permission.
        """
        from huggingface_hub.errors import NotASafetensorsRepoError

        attempts = len(_RETRY_DELAYS) + 1
        for attempt in range(1, attempts + 1):
            try:
                return fn(*args, **kwargs)
            except NotASafetensorsRepoError:
                raise
            except Exception as err:
                if not _is_transient(err):
                    raise self.translate(err, what=what, role=role, repo_id=repo_id) from err
                if attempt == attempts:
                    raise HubNetworkError(
                        self.redact(
                            f"Could not {what} ({repo_id}) on {self.endpoint}: {_transient_reason(err)}. "
                            f"Gave up after {attempts} attempts; check the connection or the Hub status "
                            "(https://status.huggingface.co) and retry."
                        )
                    ) from err
                delay = _RETRY_DELAYS[attempt - 1]
                logger.warning(
                    "%s",
                    self.redact(
                        f"Transient error during '{what}' ({_transient_reason(err)}); "
                        f"retry {attempt}/{attempts - 1} in {delay:g} s"
                    ),
                )
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def translate(self, err: Exception, *, what: str, role: str, repo_id: str) -> PtqError:
        """Map a client error to a ptq-hub error with a next step."""
        from huggingface_hub.errors import (
            GatedRepoError as HfGatedRepoError,
        )
        from huggingface_hub.errors import (
            HfHubHTTPError,
            HFValidationError,
            LocalTokenNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        url = f"{self.endpoint}/{repo_id}"
        status = _status_of(err)
        if isinstance(err, PtqError):
            return err
        if isinstance(err, HFValidationError):
            return InvalidOptionError(self.redact(f"{repo_id!r} is not a valid repo id: {err}"))
        if isinstance(err, LocalTokenNotFoundError):
            return TokenError(_NO_TOKEN_MESSAGE)
        if isinstance(err, HfGatedRepoError) or (role == "source" and status == 403 and "gated" in str(err).lower()):
            who = f"user {self.user!r}" if self.user else "this token"
            return GatedRepoError(
                f"{repo_id} is a gated repo and {who} has not been granted access. "
                f"Request access on {url} (accept the conditions there), wait for approval, then retry."
            )
        if isinstance(err, RevisionNotFoundError):
            return RepoNotFoundError(
                f"Revision not found in {repo_id}: check the branch, tag or commit you passed as revision."
            )
        if status == 401 and not isinstance(err, RepositoryNotFoundError):
            return TokenError(
                f"The Hub rejected the token while trying to {what} ({repo_id}): it is invalid or expired. "
                f"Create a new token at {self.endpoint}/settings/tokens and pass it as token= or HF_TOKEN."
            )
        if role == "target" and (isinstance(err, RepositoryNotFoundError) or status == 403):
            return HubPermissionError(
                f"This token may not {what} {repo_id}. Use a token with write access to the "
                f"'{repo_id.split('/')[0]}' namespace, or pick a target under your own user."
            )
        if isinstance(err, RepositoryNotFoundError) or (role == "source" and status in (403, 404)):
            return RepoNotFoundError(
                f"Repo {repo_id!r} was not found on {self.endpoint}, or it is private and this token "
                f"cannot see it. Check the repo id (namespace/name) at {url}, or use a token of an "
                "account that has access."
            )
        if isinstance(err, HfHubHTTPError):
            return HubError(self.redact(f"Could not {what} ({repo_id}): {_short(err)}"))
        return HubError(self.redact(f"Could not {what} ({repo_id}): {_short(err)}"))

    def redact(self, text: str) -> str:
        return _redact(text, self.token)

    # steps ----------------------------------------------------------------
    def whoami(self) -> dict[str, Any]:
        from huggingface_hub.errors import HfHubHTTPError

        try:
            info = self.call("check the token", self.api.whoami, role="target", repo_id="whoami")
        except TokenError as err:
            raise TokenError(
                f"The Hub rejected the token: it is invalid or expired. Create a new token with write access "
                f"at {self.endpoint}/settings/tokens and pass it as token= or HF_TOKEN."
            ) from err.__cause__
        except HubPermissionError as err:  # 403 on whoami: the token exists but is refused
            raise TokenError(
                f"The Hub refused this token ({self.endpoint}/api/whoami-v2). "
                f"Create a new token at {self.endpoint}/settings/tokens."
            ) from err
        except HubError as err:
            cause = err.__cause__
            if isinstance(cause, HfHubHTTPError) and _status_of(cause) in (400, 404):
                raise TokenError(
                    f"The Hub did not accept the token (HTTP {_status_of(cause)}). "
                    f"Create a new token at {self.endpoint}/settings/tokens."
                ) from err
            raise
        if not isinstance(info, dict) or not info.get("name"):
            raise TokenError("The Hub did not say which user this token belongs to; use a user access token.")
        self.user = str(info["name"])
        logger.info("Authenticated as %s", self.user)
        return info

    def check_namespace(self, target: str, identity: dict[str, Any]) -> None:
        """Refuse early when the token obviously cannot write under the target's namespace."""
        namespace = target.split("/")[0]
        user = identity.get("name")
        role = ((identity.get("auth") or {}).get("accessToken") or {}).get("role")
        if role == "read":
            raise HubPermissionError(
                f"The token of user {user!r} is read-only, so it cannot create or write {target}. "
                f"Create a token with write access at {self.endpoint}/settings/tokens."
            )
        if namespace == user:
            return
        orgs = {o.get("name"): o for o in identity.get("orgs") or [] if isinstance(o, dict)}
        if namespace not in orgs:
            raise HubPermissionError(
                f"User {user!r} is not a member of '{namespace}', so the token cannot create {target}. "
                f"Pick a target under '{user}/' or an organisation you belong to."
            )
        org_role = orgs[namespace].get("roleInOrg")
        if org_role == "read":
            raise HubPermissionError(
                f"User {user!r} has the read role in '{namespace}' and cannot create {target}. "
                f"Ask an admin of '{namespace}' for write access, or push under '{user}/'."
            )

    def inspect_source(self, repo_id: str, revision: str | None) -> _SourceState:
        """Metadata, file sizes and a read-access probe; no weight bytes."""
        from huggingface_hub.errors import RevisionNotFoundError

        try:
            info = self.call(
                "read the source repo",
                self.api.model_info,
                repo_id,
                revision=revision,
                files_metadata=True,
                role="source",
                repo_id=repo_id,
            )
        except RepoNotFoundError as err:
            if isinstance(err.__cause__, RevisionNotFoundError):
                raise RepoNotFoundError(
                    f"Revision {revision!r} was not found in {repo_id}: check the branch, tag or commit "
                    f"at {self.endpoint}/{repo_id}/tree/main, or leave revision out for the main branch."
                ) from err.__cause__
            raise
        siblings = {s.rfilename: s.size for s in info.siblings or []}
        wanted = select_repo_files(siblings)
        if not any(path.endswith(".safetensors") for path in wanted):
            others = sorted(p for p in siblings if p.lower().endswith(constants.WEIGHT_FILE_SUFFIXES))
            found = f" (it has {', '.join(others[:5])})" if others else ""
            raise NoSafetensorsError(
                f"{repo_id} has no *.safetensors weights at its root{found}. ptq-hub reads safetensors only; "
                "convert the checkpoint first (e.g. save_pretrained with safe_serialization) and push that."
            )
        sha = info.sha or revision or "main"
        missing = [path for path in wanted if siblings.get(path) is None]
        if missing:  # the server did not return sizes with model_info: ask paths-info
            entries = self.call(
                "read file sizes",
                self.api.get_paths_info,
                repo_id,
                missing,
                revision=sha,
                role="source",
                repo_id=repo_id,
            )
            siblings.update({e.path: getattr(e, "size", 0) or 0 for e in entries})
        wanted = _weights_from_index(self, repo_id, sha, wanted)
        self.probe_files(repo_id, sha, wanted)
        card_data = info.card_data.to_dict() if info.card_data is not None else {}
        if not card_data and "README.md" in siblings:
            card_data = self.fetch_card_data(repo_id, sha)
        files = {path: int(siblings.get(path) or 0) for path in wanted}
        logger.info("Source %s@%s: %d files to download (%d bytes)", repo_id, sha[:10], len(files), sum(files.values()))
        return _SourceState(repo_id=repo_id, revision=revision, sha=sha, files=files, card_data=card_data)

    def probe_files(self, repo_id: str, revision: str, paths: Sequence[str]) -> None:
        """model_info is readable on gated repos, the files are not: HEAD one file to find out."""
        probe = "config.json" if "config.json" in paths else paths[0]
        from huggingface_hub.errors import RemoteEntryNotFoundError

        try:
            self.call(
                "read files of the source repo",
                self.api.hf_hub_download,
                repo_id,
                probe,
                revision=revision,
                dry_run=True,
                role="source",
                repo_id=repo_id,
            )
        except HubError as err:
            if not isinstance(err.__cause__, RemoteEntryNotFoundError):  # a missing probe file is fine
                raise

    def fetch_card_data(self, repo_id: str, sha: str) -> dict[str, Any]:
        import tempfile

        from huggingface_hub import ModelCard

        with tempfile.TemporaryDirectory(prefix="ptq-card-") as tmp:
            path = self.call(
                "download README.md",
                self.api.hf_hub_download,
                repo_id,
                "README.md",
                revision=sha,
                local_dir=tmp,
                role="source",
                repo_id=repo_id,
            )
            try:
                return ModelCard(Path(path).read_text(encoding="utf-8"), ignore_metadata_errors=True).data.to_dict()
            except (ValueError, UnicodeDecodeError) as err:  # a broken source card must not stop the run
                logger.warning("Could not parse the source model card of %s: %s", repo_id, _short(err))
                return {}

    def inspect_target(self, repo_id: str, *, overwrite: bool) -> _TargetState:
        exists = self.call("check the target repo", self.api.repo_exists, repo_id, role="target", repo_id=repo_id)
        if not exists:
            return _TargetState(exists=False, files=[])
        files = self.call("list the target repo", self.api.list_repo_files, repo_id, role="target", repo_id=repo_id)
        content = [f for f in files if f != ".gitattributes"]
        if content and not overwrite:
            shown = ", ".join(content[:5]) + (", ..." if len(content) > 5 else "")
            raise TargetRepoExistsError(
                f"Target repo {repo_id} already holds {len(content)} file(s) ({shown}). Pick another target, "
                "or pass overwrite=True to replace its contents in one commit."
            )
        return _TargetState(exists=True, files=list(files))

    def download(self, repo_id: str, state: _SourceState, local_dir: Path, report: ProgressCallback) -> None:
        """Download the selected files at the pinned commit into ``local_dir``."""
        local_dir.mkdir(parents=True, exist_ok=True)
        total = state.total_bytes
        done = 0
        report("download", 0, total)
        logger.info("Downloading %d files of %s", len(state.files), repo_id)

        quiet = {"tqdm_class": _silent_tqdm()} if constants.PTQ_DISABLE_PROGRESS else {}

        def fetch(path: str) -> str:
            return self.call(
                f"download {path}",
                self.api.hf_hub_download,
                repo_id,
                path,
                revision=state.sha,
                local_dir=local_dir,
                role="source",
                repo_id=repo_id,
                **quiet,
            )

        workers = max(1, min(_DOWNLOAD_WORKERS, len(state.files)))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ptq-download")
        try:
            pending = {pool.submit(fetch, path): path for path in state.files}
            while pending:
                finished, _ = wait(pending, return_when=FIRST_EXCEPTION)
                for future in finished:
                    path = pending.pop(future)
                    future.result()  # raises the translated error
                    done += state.files[path]
                    logger.debug("Downloaded %s", path)
                    report("download", done, total)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        # hf_hub_download keeps resume metadata under local_dir/.cache; not part of the checkpoint.
        shutil.rmtree(local_dir / ".cache", ignore_errors=True)

    def push(
        self,
        repo_id: str,
        folder: Path,
        *,
        private: bool,
        overwrite: bool,
        target_state: _TargetState,
        commit_message: str,
        commit_description: str,
        report: ProgressCallback,
    ) -> str:
        """Create the repo if needed and push ``folder`` in one commit; undo the creation on failure."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete
        from huggingface_hub.errors import HfHubHTTPError

        files = sorted(p for p in folder.rglob("*") if p.is_file() and not _is_hidden(p.relative_to(folder)))
        sizes = {p: p.stat().st_size for p in files}
        total = sum(sizes.values())
        report("upload", 0, total)

        created = False
        try:
            if not target_state.exists:
                try:
                    self.api.create_repo(repo_id, private=private, exist_ok=False)
                    created = True
                    logger.info("Created %s repo %s", "private" if private else "public", repo_id)
                except HfHubHTTPError as err:
                    if _status_of(err) != 409:
                        raise self.translate(err, what="create", role="target", repo_id=repo_id) from err
                    # Created by someone else since the check: look again.
                    target_state = self.inspect_target(repo_id, overwrite=overwrite)
                except Exception as err:
                    if _is_transient(err):
                        raise HubNetworkError(
                            self.redact(f"Could not create {repo_id}: {_short(err)}. Retry later.")
                        ) from err
                    raise self.translate(err, what="create", role="target", repo_id=repo_id) from err
            elif private:
                logger.info("Target %s exists; its visibility is left as it is", repo_id)

            additions = [
                CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p)) for p in files
            ]
            # Pre-upload file by file: each one is retried on its own and progress is per file.
            done = 0
            for op, path in zip(additions, files, strict=True):
                self.call(
                    f"upload {op.path_in_repo}",
                    self.api.preupload_lfs_files,
                    repo_id,
                    [op],
                    role="target",
                    repo_id=repo_id,
                )
                done += sizes[path]
                logger.debug("Uploaded %s", op.path_in_repo)
                report("upload", done, total)

            new_paths = {op.path_in_repo for op in additions}
            deletions = [
                CommitOperationDelete(path_in_repo=path)
                for path in target_state.files
                if path not in new_paths and path != ".gitattributes"
            ]
            if deletions:
                logger.info("Replacing %d stale file(s) in %s", len(deletions), repo_id)
            info = self.call(
                "commit to",
                self.api.create_commit,
                repo_id,
                [*additions, *deletions],
                commit_message=commit_message,
                commit_description=commit_description,
                role="target",
                repo_id=repo_id,
            )
            if done != total:
                report("upload", total, total)
            return str(info.oid)
        except BaseException:
            if created:
                self.delete_created(repo_id)
            raise

    def delete_created(self, repo_id: str) -> None:
        try:
            self.api.delete_repo(repo_id, missing_ok=True)
            logger.warning("Deleted %s again: this run created it and did not finish", repo_id)
        except Exception as err:  # noqa: BLE001 - whatever failed, the original error must win
            logger.error(
                "%s",
                self.redact(
                    f"Could not delete the half-made repo {repo_id} ({_short(err)}); it holds no commit from "
                    "this run. Delete it on the Hub if you do not want it."
                ),
            )


# --- helpers -----------------------------------------------------------------
_NO_TOKEN_MESSAGE = (
    "No Hugging Face token found. Pass token=..., set HF_TOKEN, or run `hf auth login`; "
    "pushing a quantized repo needs a token with write access."
)
_TOKEN_PATTERN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
_BEARER_PATTERN = re.compile(r"(?i)(bearer\s+)[^\s'\"]+")


def _redact(text: str, token: str | None) -> str:
    """Remove the token (and anything shaped like a Hub token or a bearer header) from text."""
    if token:
        text = text.replace(token, "***")
    text = _TOKEN_PATTERN.sub("hf_***", text)
    return _BEARER_PATTERN.sub(r"\1***", text)


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
        raise TokenError(_NO_TOKEN_MESSAGE)
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


def _check_disk_space(root: Path, state: _SourceState) -> None:
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


def _weights_from_index(hub: _Hub, repo_id: str, sha: str, wanted: list[str]) -> list[str]:
    """Only the shards the checkpoint uses: those the index names, else ``model.safetensors``.

    Repos such as Mistral's also hold ``consolidated.safetensors``, the same weights
    under other names; quantizing both would duplicate every tensor.
    """
    index_name = "model.safetensors.index.json"
    if index_name not in wanted:
        if "model.safetensors" in wanted:
            return [p for p in wanted if not p.endswith(".safetensors") or p == "model.safetensors"]
        return wanted
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ptq-index-") as tmp:
        path = hub.call(
            f"download {index_name}",
            hub.api.hf_hub_download,
            repo_id,
            index_name,
            revision=sha,
            local_dir=tmp,
            role="source",
            repo_id=repo_id,
        )
        try:
            shards = set(json.loads(Path(path).read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            return wanted  # the pipeline reports a broken index with a precise error
    return [p for p in wanted if not p.endswith(".safetensors") or p in shards]


def _is_transient(err: BaseException) -> bool:
    """Connection errors, timeouts and HTTP 408/429/5xx, anywhere in the cause chain."""
    try:
        import httpx2 as httpx
    except ImportError:  # pragma: no cover - older clients use httpx
        import httpx  # type: ignore[no-redef]

    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (httpx.TransportError, ConnectionError, TimeoutError)):
            return True
        status = _status_of(current)
        if status is not None:
            return status in _TRANSIENT_STATUS or status >= 500
        current = current.__cause__ or current.__context__
    return False


def _transient_reason(err: BaseException) -> str:
    """The root cause of a transient failure: ``HTTP 503`` or ``ConnectError: ...``."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        status = _status_of(current)
        if status is not None:
            return f"HTTP {status}"
        if current.__cause__ is None and current.__context__ is None:
            return f"{type(current).__name__}: {_short(current)}"
        current = current.__cause__ or current.__context__
    return _short(err)


def _status_of(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    return int(status) if isinstance(status, int) else None


def _short(err: BaseException) -> str:
    """First line of an error, without the client's boilerplate."""
    text = str(err).strip() or type(err).__name__
    first = next((line for line in text.splitlines() if line.strip()), text)
    return first[:300]


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _silent_tqdm() -> type:
    """A tqdm class that draws nothing (``PTQ_DISABLE_PROGRESS``): CI logs stay readable."""
    from tqdm.auto import tqdm

    class _SilentTqdm(tqdm):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return _SilentTqdm


def _progress_reporter(progress: ProgressCallback | None) -> ProgressCallback:
    def report(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress(stage, done, total)

    return report


def _render_card(
    *, source: str, target: str, scheme: str, ignore: Sequence[str], result: Any, source_state: _SourceState
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
        tool_version=_version(),
        endpoint=constants.HF_ENDPOINT,
    )


def _commit_description(source: str, state: _SourceState, scheme: str, ignore: Sequence[str], result: Any) -> str:
    from .sizes import compression_ratio, format_bytes

    ratio = compression_ratio(int(result.size_before), int(result.size_after))
    return (
        f"Quantized {source} (revision {state.sha}) to {scheme} with ptq-hub {_version()}, data-free.\n\n"
        f"Ignore list: {', '.join(ignore) or 'none'}\n"
        f"Size: {format_bytes(int(result.size_before))} -> {format_bytes(int(result.size_after))} "
        f"({ratio:.2f}x smaller)"
    )


def _version() -> str:
    from . import __version__

    return __version__
