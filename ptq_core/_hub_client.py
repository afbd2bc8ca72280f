"""The Hub client behind ``hub.py``: one token, retries, typed errors, file selection.

Private to ``ptq_core``: ``hub.py`` holds the public calls (``quantize_to_hub``...),
this module the mechanics they share. Every ``huggingface_hub`` request goes
through ``HubClient.call``, which retries transient failures with backoff and
turns the client's errors into :mod:`ptq_core.errors` classes, token redacted.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from . import constants
from .errors import (
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

logger = logging.getLogger("ptq_core.hub")

ProgressCallback = Callable[[str, int, int], None]


_T = TypeVar("_T")


_RETRY_DELAYS: tuple[float, ...] = (1.0, 2.0, 4.0)
"""Seconds to wait before each retry of a transient Hub failure (3 retries, 4 attempts)."""


_DOWNLOAD_WORKERS = 8


_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


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


@dataclass
class SourceState:
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
class TargetState:
    exists: bool
    files: list[str]


class HubClient:
    """One token, one endpoint; every call retried and its errors translated."""

    def __init__(self, token: str | None) -> None:
        from huggingface_hub import HfApi

        self.token = token
        self.endpoint = constants.HF_ENDPOINT.rstrip("/")
        self.api: HfApi = HfApi(
            endpoint=self.endpoint,
            token=token if token else False,
            library_name="ptq-hub",
            library_version=tool_version(),
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
            return TokenError(NO_TOKEN_MESSAGE)
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
        return redact(text, self.token)

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

    def inspect_source(self, repo_id: str, revision: str | None) -> SourceState:
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
        return SourceState(repo_id=repo_id, revision=revision, sha=sha, files=files, card_data=card_data)

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

    def inspect_target(self, repo_id: str, *, overwrite: bool) -> TargetState:
        exists = self.call("check the target repo", self.api.repo_exists, repo_id, role="target", repo_id=repo_id)
        if not exists:
            return TargetState(exists=False, files=[])
        files = self.call("list the target repo", self.api.list_repo_files, repo_id, role="target", repo_id=repo_id)
        content = [f for f in files if f != ".gitattributes"]
        if content and not overwrite:
            shown = ", ".join(content[:5]) + (", ..." if len(content) > 5 else "")
            raise TargetRepoExistsError(
                f"Target repo {repo_id} already holds {len(content)} file(s) ({shown}). Pick another target, "
                "or pass overwrite=True to replace its contents in one commit."
            )
        return TargetState(exists=True, files=list(files))

    def download(self, repo_id: str, state: SourceState, local_dir: Path, report: ProgressCallback) -> None:
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
        target_state: TargetState,
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


NO_TOKEN_MESSAGE = (
    "No Hugging Face token found. Pass token=..., set HF_TOKEN, or run `hf auth login`; "
    "pushing a quantized repo needs a token with write access."
)


_TOKEN_PATTERN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")


_BEARER_PATTERN = re.compile(r"(?i)(bearer\s+)[^\s'\"]+")


def redact(text: str, token: str | None) -> str:
    """Remove the token (and anything shaped like a Hub token or a bearer header) from text."""
    if token:
        text = text.replace(token, "***")
    text = _TOKEN_PATTERN.sub("hf_***", text)
    return _BEARER_PATTERN.sub(r"\1***", text)


def _weights_from_index(hub: HubClient, repo_id: str, sha: str, wanted: list[str]) -> list[str]:
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


def tool_version() -> str:
    from . import __version__

    return __version__

