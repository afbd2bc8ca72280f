"""The target side: who is pushing, may they write there, does the target exist, create or undo it.

The files themselves reach the target through ``staging`` (a staging branch,
then one commit on ``main``). A repo this run created is deleted again when the
run fails before anything was staged in it (``delete_created``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._http import HubHttp
from .errors import HubPermissionError, TargetRepoExistsError, TokenError
from .http_errors import short, status_of

logger = logging.getLogger(__name__)

__all__ = [
    "TargetState",
    "check_namespace",
    "create_target",
    "delete_created",
    "inspect_target",
    "new_content",
    "refuse_existing_content",
    "whoami",
]


@dataclass(frozen=True)
class TargetState:
    """The target repo before the run: does it exist, which files does its ``main`` hold, at which commit.

    ``head`` is the commit of ``main`` those files were listed at: the job's commit on
    ``main`` names it as its parent, so a commit made meanwhile makes that one fail
    instead of being overwritten. ``branches`` maps every branch to its head.
    """

    exists: bool
    files: tuple[str, ...]
    head: str | None = None
    branches: Mapping[str, str] = field(default_factory=dict)


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


def inspect_target(http: HubHttp, repo_id: str) -> TargetState:
    """Whether the target exists, which files its ``main`` holds and at which commit, and its branches."""
    exists = http.call("check the target repo", http.api.repo_exists, repo_id, role="target", repo_id=repo_id)
    if not exists:
        return TargetState(exists=False, files=())
    refs = http.call("list the branches of", http.api.list_repo_refs, repo_id, role="target", repo_id=repo_id)
    branches = {b.name: b.target_commit for b in refs.branches}
    head = branches.get("main")
    # listed at the head just read, so that the files and the parent of the final commit agree
    files = http.call("list the target repo", http.api.list_repo_files, repo_id, revision=head, role="target",
                      repo_id=repo_id)
    return TargetState(exists=True, files=tuple(files), head=head, branches=branches)


def new_content(state: TargetState, verified: TargetState) -> list[str]:
    """Files of ``main`` in ``state`` that were not in the ``verified`` state (``.gitattributes`` aside)."""
    before = set(verified.files)
    return [f for f in state.files if f not in before and f != ".gitattributes"]


def refuse_existing_content(state: TargetState, repo_id: str) -> None:
    """Never silently overwrite a model: a target whose ``main`` holds files needs ``overwrite``.

    Raises:
        TargetRepoExistsError: it holds files (the caller checked that ``overwrite`` is false).
    """
    content = [f for f in state.files if f != ".gitattributes"]
    if content:
        shown = ", ".join(content[:5]) + (", ..." if len(content) > 5 else "")
        raise TargetRepoExistsError(
            f"Target repo {repo_id} already holds {len(content)} file(s) ({shown}). Pick another target, "
            "or pass overwrite=True to replace its contents in one commit."
        )


def create_target(http: HubHttp, repo_id: str, *, private: bool) -> bool:
    """Create the target repo; ``False`` when someone else created it since it was inspected."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        http.call(
            "create", http.api.create_repo, repo_id, private=private, exist_ok=False,
            role="target", repo_id=repo_id,
            passthrough=lambda err: isinstance(err, HfHubHTTPError) and status_of(err) == 409,
        )
    except HfHubHTTPError:  # 409: created by someone else (another part of the job) since the check
        return False
    logger.info("Created %s repo %s", "private" if private else "public", repo_id)
    return True


def delete_created(http: HubHttp, repo_id: str) -> None:
    """Delete a repo this run created and did not finish; the original error must win, so never raise."""
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
