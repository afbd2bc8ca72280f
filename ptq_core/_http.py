"""The one HTTP layer under ``source`` and ``publish``: token, retries, one error mapper.

Every ``huggingface_hub`` request goes through :meth:`HubHttp.call`, which retries
transient failures (connection errors, timeouts, HTTP 408/429/5xx) with backoff
and turns the client's errors into :mod:`ptq_core.errors` classes, token
redacted. A caller that needs a different meaning for one error says so *per
call* (``translate=`` or ``passthrough=``) instead of catching the translated
error and looking at its ``__cause__``. What a failure means (transient, its status,
a 429's wait, a stall) is ``http_errors.py``; the client's timeouts and throughput floor,
installed by ``HubHttp``, are ``http_deadlines.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from . import constants
from ._version import __version__
from .errors import (
    GatedRepoError,
    HubError,
    HubNetworkError,
    HubPermissionError,
    HubRateLimitError,
    InvalidOptionError,
    PtqError,
    RepoNotFoundError,
    TokenError,
    TransferStalledError,
)
from .http_deadlines import install_transfer_deadlines
from .http_errors import is_rate_limited, is_stall, is_transient, rate_limit_asked, short, status_of, transient_reason
from .redact import redact

logger = logging.getLogger(__name__)

__all__ = [
    "NO_TOKEN_MESSAGE",
    "HubHttp",
    "check_repo_id",
    "resolve_token",
    "tool_version",
]

_T = TypeVar("_T")

_RETRY_DELAYS: tuple[float, ...] = (1.0, 2.0, 4.0)
"""Seconds to wait before each retry of a transient Hub failure (3 retries, 4 attempts)."""

NO_TOKEN_MESSAGE = (
    "No Hugging Face token found. Pass token=..., set HF_TOKEN, or run `hf auth login`; "
    "pushing a quantized repo needs a token with write access."
)

Translate = Callable[[Exception], "PtqError | None"]
"""A per-call mapper: a ptq-hub error for this failure, or ``None`` for the default mapping."""


class HubHttp:
    """One token, one endpoint; every call retried and its errors translated once."""

    def __init__(self, token: str | None) -> None:
        from huggingface_hub import HfApi

        install_transfer_deadlines()
        self.token = token
        self.endpoint = constants.HF_ENDPOINT.rstrip("/")
        self.api: HfApi = HfApi(
            endpoint=self.endpoint,
            token=token if token else False,
            library_name="ptq-hub",
            library_version=tool_version(),
        )
        self.user: str | None = None

    def call(
        self,
        what: str,
        fn: Callable[..., _T],
        *args: Any,
        role: str,
        repo_id: str,
        translate: Translate | None = None,
        passthrough: Callable[[Exception], bool] | None = None,
        retry: bool = True,
        **kwargs: Any,
    ) -> _T:
        """``fn(*args, **kwargs)`` with retries on transient failures and typed errors.

        Args:
            what: the action in words (``"download config.json"``), for messages.
            role: ``"source"`` or ``"target"``: a 403 on the source means gated or
                private, on the target it means no write permission.
            repo_id: the repo the call is about, for messages.
            translate: consulted first for a non-transient failure; its error is raised.
            passthrough: failures it accepts are re-raised untouched (the caller
                handles that client error itself, e.g. a missing optional file).
            retry: ``False`` for a request that must not be sent twice blindly (a commit
                on ``main``): one attempt, a transient failure raises ``HubNetworkError``
                at once and the caller finds out whether it landed.
        """
        attempts = len(_RETRY_DELAYS) + 1 if retry else 1
        for attempt in range(1, attempts + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as err:
                if passthrough is not None and passthrough(err):
                    raise
                if not is_transient(err):
                    mapped = translate(err) if translate is not None else None
                    raise (mapped or self.translate(err, what=what, role=role, repo_id=repo_id)) from err
                delay = _RETRY_DELAYS[attempt - 1] if attempt < attempts else 0.0
                asked = rate_limit_asked(err)
                if asked is not None and asked > constants.RATE_LIMIT_MAX_WAIT:
                    raise HubRateLimitError(self.redact(
                        f"Could not {what} ({repo_id}) on {self.endpoint}: the Hub rate-limits this token/IP (HTTP 429) "
                        f"and asks to wait {asked:.0f} s, more than the {constants.RATE_LIMIT_MAX_WAIT:g} s this job waits "
                        "(PTQ_RATE_LIMIT_MAX_WAIT). Rerun the job later (it resumes), or raise PTQ_RATE_LIMIT_MAX_WAIT."
                    )) from err
                if attempt == attempts:
                    raise _gave_up(err, what=what, repo_id=repo_id, endpoint=self.endpoint, attempts=attempts,
                                   redact=self.redact) from err
                if asked is not None:  # the server said when: neither sooner (wasted) nor later (idle)
                    delay = asked
                logger.warning(
                    "%s",
                    self.redact(
                        f"Transient error during '{what}' ({transient_reason(err)}); "
                        f"retry {attempt}/{attempts - 1} in {delay:g} s"
                    ),
                )
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def translate(self, err: Exception, *, what: str, role: str, repo_id: str) -> PtqError:
        """The default map from a client error to a ptq-hub error with a next step."""
        from huggingface_hub.errors import GatedRepoError as HfGatedRepoError
        from huggingface_hub.errors import (
            HFValidationError,
            LocalTokenNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        url = f"{self.endpoint}/{repo_id}"
        status = status_of(err)
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
        return HubError(self.redact(f"Could not {what} ({repo_id}): {short(err)}"))

    def redact(self, text: str) -> str:
        return redact(text, self.token)


def _gave_up(
    err: BaseException, *, what: str, repo_id: str, endpoint: str, attempts: int, redact: Callable[[str], str]
) -> HubNetworkError:
    """The error after the last attempt: a stall, a rate limit or another transient failure, each with its fix."""
    reason = transient_reason(err)
    head = f"Could not {what} ({repo_id}) on {endpoint}"
    if is_stall(err):
        return TransferStalledError(redact(
            f"{head}: the transfer stalled ({reason}). Gave up after {attempts} attempts, each resumed where the "
            f"last one stopped. A transfer counts as stalled when it moves less than {constants.STALL_MIN_BYTES} "
            f"bytes in {constants.STALL_WINDOW:g} s (PTQ_STALL_MIN_BYTES, PTQ_STALL_WINDOW) or nothing for "
            f"{constants.HTTP_READ_TIMEOUT:g} s (PTQ_HTTP_READ_TIMEOUT). Check the network (a proxy or firewall "
            "holding connections open), then rerun the job; it resumes. On a very slow link, raise those limits."
        ))
    if is_rate_limited(err):
        return HubRateLimitError(redact(
            f"{head}: the Hub kept answering HTTP 429 (rate limited) after {attempts} attempts. "
            "Wait a few minutes and rerun the job (it resumes); fewer parallel parts make fewer requests."
        ))
    return HubNetworkError(redact(
        f"{head}: {reason}. Gave up after {attempts} attempts; check the connection or the Hub status "
        "(https://status.huggingface.co) and retry."
    ))


def resolve_token(token: str | None, *, required: bool) -> str | None:
    """Argument, else ``HF_TOKEN``, else the cached login (``hf auth login``).

    Raises:
        TokenError: ``token`` is not a string, or none is found and ``required``.
    """
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


def check_repo_id(repo_id: Any, what: str) -> None:
    """Refuse an invalid repo id before any request.

    Raises:
        InvalidOptionError: not a string, not a valid Hub id, or a source without its namespace.
    """
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


def tool_version() -> str:
    return __version__
