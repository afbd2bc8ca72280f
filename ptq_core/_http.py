"""The one HTTP layer under ``source`` and ``publish``: token, retries, one error mapper.

Every ``huggingface_hub`` request goes through :meth:`HubHttp.call`, which retries
transient failures (connection errors, timeouts, HTTP 408/429/5xx) with backoff
and turns the client's errors into :mod:`ptq_core.errors` classes, token
redacted. A caller that needs a different meaning for one error says so *per
call* (``translate=`` or ``passthrough=``) instead of catching the translated
error and looking at its ``__cause__``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from . import constants
from .errors import (
    GatedRepoError,
    HubError,
    HubNetworkError,
    HubPermissionError,
    InvalidOptionError,
    PtqError,
    RepoNotFoundError,
    TokenError,
)
from .redact import redact

logger = logging.getLogger("ptq_core.hub")

__all__ = ["NO_TOKEN_MESSAGE", "HubHttp", "check_repo_id", "resolve_token", "short", "status_of", "tool_version"]

_T = TypeVar("_T")

_RETRY_DELAYS: tuple[float, ...] = (1.0, 2.0, 4.0)
"""Seconds to wait before each retry of a transient Hub failure (3 retries, 4 attempts)."""

_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})

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
                if not _is_transient(err):
                    mapped = translate(err) if translate is not None else None
                    raise (mapped or self.translate(err, what=what, role=role, repo_id=repo_id)) from err
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


# --- token and ids -----------------------------------------------------------
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


# --- error classification ----------------------------------------------------
def _is_transient(err: BaseException) -> bool:
    """Connection errors, timeouts and HTTP 408/429/5xx, anywhere in the cause chain."""
    try:
        import httpx2 as httpx
    except ImportError:  # older clients use httpx
        import httpx  # type: ignore[no-redef]

    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (httpx.TransportError, ConnectionError, TimeoutError)):
            return True
        status = status_of(current)
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
        status = status_of(current)
        if status is not None:
            return f"HTTP {status}"
        if current.__cause__ is None and current.__context__ is None:
            return f"{type(current).__name__}: {short(current)}"
        current = current.__cause__ or current.__context__
    return short(err)


def status_of(err: BaseException) -> int | None:
    """The HTTP status of a client error, if it carries a response."""
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    return int(status) if isinstance(status, int) else None


def short(err: BaseException) -> str:
    """First line of an error, without the client's boilerplate."""
    text = str(err).strip() or type(err).__name__
    first = next((line for line in text.splitlines() if line.strip()), text)
    return first[:300]


def tool_version() -> str:
    from . import __version__

    return __version__
