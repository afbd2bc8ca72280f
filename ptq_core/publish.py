"""The target side: who is pushing, may they write there, and one commit that lands whole.

Large files are pre-uploaded one by one (``preupload_lfs_files``, each retried on
its own) and then referenced by a single ``create_commit``:
``upload_large_folder`` is not used because it commits in several steps, which
would leave a half-filled repo that looks finished if the run broke off. A repo
this run created is deleted again when anything fails after its creation; an
existing repo (``overwrite``) keeps its old commit until the new one lands whole.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._http import HubHttp, short, status_of
from .errors import HubPermissionError, TargetRepoExistsError, TokenError

logger = logging.getLogger("ptq_core.hub")

__all__ = ["TargetState", "check_namespace", "inspect_target", "push_folder", "whoami"]

ProgressCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class TargetState:
    """The target repo before the run: does it exist, and which files does it hold."""

    exists: bool
    files: tuple[str, ...]


def whoami(http: HubHttp) -> dict[str, Any]:
    """The token's identity (``name``, ``orgs``, token role); remembered on ``http`` for messages.

    Raises:
        TokenError: the Hub rejects the token, or it is not a user token.
        HubNetworkError: the Hub could not be reached.
    """

    def rejected(err: Exception) -> TokenError | None:
        status = status_of(err)
        new_token = f"Create a new token with write access at {http.endpoint}/settings/tokens"
        if status == 401:
            return TokenError(f"The Hub rejected the token: it is invalid or expired. {new_token} and pass it as token= or HF_TOKEN.")
        if status == 403:  # the token exists but is refused
            return TokenError(f"The Hub refused this token ({http.endpoint}/api/whoami-v2). {new_token}.")
        if status in (400, 404):
            return TokenError(f"The Hub did not accept the token (HTTP {status}). {new_token}.")
        return None

    info = http.call("check the token", http.api.whoami, role="target", repo_id="whoami", translate=rejected)
    if not isinstance(info, dict) or not info.get("name"):
        raise TokenError("The Hub did not say which user this token belongs to; use a user access token.")
    http.user = str(info["name"])
    logger.info("Authenticated as %s", http.user)
    return info


def check_namespace(http: HubHttp, target: str, identity: dict[str, Any]) -> None:
    """Refuse early when the token obviously cannot write under the target's namespace.

    Raises:
        HubPermissionError: a read-only token, or a namespace the user cannot write to.
    """
    namespace = target.split("/")[0]
    user = identity.get("name")
    role = ((identity.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise HubPermissionError(
            f"The token of user {user!r} is read-only, so it cannot create or write {target}. "
            f"Create a token with write access at {http.endpoint}/settings/tokens."
        )
    if namespace == user:
        return
    orgs = {o.get("name"): o for o in identity.get("orgs") or [] if isinstance(o, dict)}
    if namespace not in orgs:
        raise HubPermissionError(
            f"User {user!r} is not a member of '{namespace}', so the token cannot create {target}. "
            f"Pick a target under '{user}/' or an organisation you belong to."
        )
    if orgs[namespace].get("roleInOrg") == "read":
        raise HubPermissionError(
            f"User {user!r} has the read role in '{namespace}' and cannot create {target}. "
            f"Ask an admin of '{namespace}' for write access, or push under '{user}/'."
        )


def inspect_target(http: HubHttp, repo_id: str, *, overwrite: bool) -> TargetState:
    """Whether the target exists and what it holds.

    Raises:
        TargetRepoExistsError: it holds files and ``overwrite`` is false.
    """
    exists = http.call("check the target repo", http.api.repo_exists, repo_id, role="target", repo_id=repo_id)
    if not exists:
        return TargetState(exists=False, files=())
    files = http.call("list the target repo", http.api.list_repo_files, repo_id, role="target", repo_id=repo_id)
    content = [f for f in files if f != ".gitattributes"]
    if content and not overwrite:
        shown = ", ".join(content[:5]) + (", ..." if len(content) > 5 else "")
        raise TargetRepoExistsError(
            f"Target repo {repo_id} already holds {len(content)} file(s) ({shown}). Pick another target, "
            "or pass overwrite=True to replace its contents in one commit."
        )
    return TargetState(exists=True, files=tuple(files))


def push_folder(
    http: HubHttp,
    repo_id: str,
    folder: Path,
    *,
    private: bool,
    overwrite: bool,
    target_state: TargetState,
    commit_message: str,
    commit_description: str,
    progress: ProgressCallback,
) -> str:
    """Create the repo if needed and push ``folder`` in one commit; undo the creation on failure.

    Returns:
        The commit sha.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.errors import HfHubHTTPError

    files = sorted(p for p in folder.rglob("*") if p.is_file() and not _is_hidden(p.relative_to(folder)))
    sizes = {p: p.stat().st_size for p in files}
    total = sum(sizes.values())
    progress("upload", 0, total)

    created = False
    try:
        if not target_state.exists:
            try:
                http.call(
                    "create", http.api.create_repo, repo_id, private=private, exist_ok=False,
                    role="target", repo_id=repo_id,
                    passthrough=lambda err: isinstance(err, HfHubHTTPError) and status_of(err) == 409,
                )
                created = True
                logger.info("Created %s repo %s", "private" if private else "public", repo_id)
            except HfHubHTTPError:  # 409: created by someone else since the check; look again
                target_state = inspect_target(http, repo_id, overwrite=overwrite)
        elif private:
            logger.info("Target %s exists; its visibility is left as it is", repo_id)

        additions = [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p)) for p in files]
        # Pre-upload file by file: each one is retried on its own and progress is per file.
        done = 0
        for op, path in zip(additions, files, strict=True):
            http.call(f"upload {op.path_in_repo}", http.api.preupload_lfs_files, repo_id, [op], role="target", repo_id=repo_id)
            done += sizes[path]
            logger.debug("Uploaded %s", op.path_in_repo)
            progress("upload", done, total)

        new_paths = {op.path_in_repo for op in additions}
        deletions = [
            CommitOperationDelete(path_in_repo=path)
            for path in target_state.files
            if path not in new_paths and path != ".gitattributes"
        ]
        if deletions:
            logger.info("Replacing %d stale file(s) in %s", len(deletions), repo_id)
        info = http.call(
            "commit to", http.api.create_commit, repo_id, [*additions, *deletions],
            commit_message=commit_message, commit_description=commit_description, role="target", repo_id=repo_id,
        )
        if done != total:
            progress("upload", total, total)
        return str(info.oid)
    except BaseException:
        if created:
            _delete_created(http, repo_id)
        raise


def _delete_created(http: HubHttp, repo_id: str) -> None:
    try:
        http.api.delete_repo(repo_id, missing_ok=True)
        logger.warning("Deleted %s again: this run created it and did not finish", repo_id)
    except Exception as err:  # noqa: BLE001 - whatever failed, the original error must win
        logger.error(
            "%s",
            http.redact(
                f"Could not delete the half-made repo {repo_id} ({short(err)}); it holds no commit from "
                "this run. Delete it on the Hub if you do not want it."
            ),
        )


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)

