"""The one HTTP layer under ``source`` and ``publish``: token, retries, one error mapper.

Every ``huggingface_hub`` request goes through :meth:`HubHttp.call`, which retries
transient failures (connection errors, timeouts, HTTP 408/429/5xx) with backoff
and turns the client's errors into :mod:`ptq_core.errors` classes, token
redacted. A caller that needs a different meaning for one error says so *per
call* (``translate=`` or ``passthrough=``) instead of catching the translated
error and looking at its ``__cause__``.
"""

from __future__ import annotations

import email.utils
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
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
from .redact import redact

logger = logging.getLogger(__name__)

__all__ = [
    "NO_TOKEN_MESSAGE",
    "HubHttp",
    "check_repo_id",
    "install_transfer_deadlines",
    "is_stall",
    "rate_limit_wait",
    "resolve_token",
    "short",
    "status_of",
    "tool_version",
]

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
                if not _is_transient(err):
                    mapped = translate(err) if translate is not None else None
                    raise (mapped or self.translate(err, what=what, role=role, repo_id=repo_id)) from err
                delay = _RETRY_DELAYS[attempt - 1] if attempt < attempts else 0.0
                asked = _rate_limit_asked(err)
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


def _gave_up(
    err: BaseException, *, what: str, repo_id: str, endpoint: str, attempts: int, redact: Callable[[str], str]
) -> HubNetworkError:
    """The error after the last attempt: a stall, a rate limit or another transient failure, each with its fix."""
    reason = _transient_reason(err)
    head = f"Could not {what} ({repo_id}) on {endpoint}"
    if is_stall(err):
        return TransferStalledError(redact(
            f"{head}: the transfer stalled ({reason}). Gave up after {attempts} attempts, each resumed where the "
            f"last one stopped. A transfer counts as stalled when it moves less than {constants.STALL_MIN_BYTES} "
            f"bytes in {constants.STALL_WINDOW:g} s (PTQ_STALL_MIN_BYTES, PTQ_STALL_WINDOW) or nothing for "
            f"{constants.HTTP_READ_TIMEOUT:g} s (PTQ_HTTP_READ_TIMEOUT). Check the network (a proxy or firewall "
            "holding connections open), then rerun the job; it resumes. On a very slow link, raise those limits."
        ))
    if status_of(_rooted(err)) == 429:
        return HubRateLimitError(redact(
            f"{head}: the Hub kept answering HTTP 429 (rate limited) after {attempts} attempts. "
            "Wait a few minutes and rerun the job (it resumes); fewer parallel parts make fewer requests."
        ))
    return HubNetworkError(redact(
        f"{head}: {reason}. Gave up after {attempts} attempts; check the connection or the Hub status "
        "(https://status.huggingface.co) and retry."
    ))


# --- rate limits (HTTP 429) ----------------------------------------------------
# The Hub says how long to wait in the IETF draft header (`RateLimit: "api";r=0;t=55`,
# t = seconds until the window resets); other servers and proxies use `Retry-After`
# (seconds or an HTTP date). Waiting less fails again; waiting by our own schedule
# (1, 2, 4 s) against a 55 s window fails all retries.
_RATELIMIT_RESET = re.compile(r"(?:^|;)\s*t\s*=\s*(\d+(?:\.\d+)?)\s*(?:;|$)")
_RATELIMIT_REMAINING = re.compile(r"(?:^|;)\s*r\s*=\s*(\d+)\s*(?:;|$)")


def rate_limit_wait(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds a 429 answer asks the client to wait, from ``RateLimit``'s ``t=`` or ``Retry-After``; else ``None``.

    ``RateLimit`` may list several policies (``"api";r=0;t=55, "resolvers";r=90;t=200``): only
    exhausted ones (``r=0``, or no ``r``) count. ``Retry-After`` may be seconds (``"30"``) or an
    HTTP date (``"Wed, 21 Oct 2026 07:28:00 GMT"``, counted from ``now``, a Unix time, default
    the clock). When several apply, the longest wait wins.

    >>> rate_limit_wait({"RateLimit": '"api";r=0;t=55'})
    55.0
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    waits: list[float] = []
    for policy in lowered.get("ratelimit", "").split(","):
        reset = _RATELIMIT_RESET.search(policy.strip())
        remaining = _RATELIMIT_REMAINING.search(policy.strip())
        if reset and (remaining is None or int(remaining[1]) == 0):
            waits.append(float(reset[1]))
    retry_after = lowered.get("retry-after", "").strip()
    if retry_after:
        try:
            waits.append(max(0.0, float(retry_after)))
        except ValueError:
            try:
                moment = email.utils.parsedate_to_datetime(retry_after)
            except (TypeError, ValueError, IndexError):
                moment = None
            if moment is not None and moment.tzinfo is not None:
                waits.append(max(0.0, moment.timestamp() - (time.time() if now is None else now)))
    return max(waits) if waits else None


def _rate_limit_asked(err: BaseException) -> float | None:
    """The wait a 429 in ``err``'s cause chain asks for, if it names one."""
    root = _rooted(err)
    if status_of(root) != 429:
        return None
    headers = getattr(getattr(root, "response", None), "headers", None)
    return rate_limit_wait(headers) if headers is not None else None


def _rooted(err: BaseException) -> BaseException:
    """The first error in the cause chain that carries an HTTP response, else ``err``."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if status_of(current) is not None:
            return current
        current = current.__cause__ or current.__context__
    return err


# --- transfer deadlines ----------------------------------------------------------
# huggingface_hub's shared httpx client is built with `timeout=None`, and LFS uploads
# (`lfs._upload_single_part` / `_upload_parts_iteratively`: `http_backoff("PUT", url,
# data=fileobj)`) pass none, so a peer that stops sending or reading holds the job
# forever, and one that trickles (100 bytes every 2 s) is never caught by any timeout.
# Through the client's public hook (`set_client_factory`) every request of that client,
# ours (`remote.fetch_range`) and its own (LFS parts, commits, downloads), gets:
#   * connect / read / write timeouts (`constants.HTTP_*_TIMEOUT`) where it has none;
#   * a throughput floor on its request and response bodies: fewer than
#     `STALL_MIN_BYTES` moved in a `STALL_WINDOW` raises `TransferStalledError`.
# Both are transient to `HubHttp.call`, which retries (a Range download resumes at its
# byte). A stall is noticed at the next chunk, and a silent peer within the read
# timeout, so detection takes at most about `STALL_WINDOW + HTTP_READ_TIMEOUT`.
_UPLOAD_PIECE = 16 << 10
"""Request bodies are sent in pieces this small so that the throughput check runs often on a slow reader."""
_installed = False
_install_lock = threading.Lock()


def install_transfer_deadlines() -> None:
    """Make huggingface_hub's shared client apply ptq-hub's timeouts and throughput floor (idempotent).

    Uses the client's public ``set_client_factory``; the client it builds is the library's
    default one plus two event hooks, so headers, redirects and offline mode are unchanged.
    The limits are read per request, so changing the constants takes effect at once.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        from huggingface_hub import set_client_factory

        set_client_factory(_deadline_client)
        _installed = True


def _deadline_client():
    # the library's own factory (utils/_http.py), so that its request hook stays first
    from huggingface_hub.utils._http import default_client_factory

    client = default_client_factory()
    hooks = client.event_hooks
    hooks.setdefault("request", []).append(_apply_deadlines)
    hooks.setdefault("response", []).append(_watch_response)
    client.event_hooks = hooks
    return client


def _apply_deadlines(request) -> None:
    """Request hook: default timeouts where the caller set none; a watched body when there is one."""
    timeout = dict(request.extensions.get("timeout") or {})
    defaults = {"connect": constants.HTTP_CONNECT_TIMEOUT, "read": constants.HTTP_READ_TIMEOUT,
                "write": constants.HTTP_READ_TIMEOUT, "pool": None}
    request.extensions["timeout"] = {key: timeout.get(key) or value for key, value in defaults.items()}
    has_body = request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
    if has_body and not isinstance(request.stream, _WatchedBody):
        size = request.headers.get("content-length")
        request.stream = _WatchedBody(request.stream, _Deadline(
            f"upload to {_where(request.url)}", int(size) if size and size.isdigit() else None))


def _watch_response(response) -> None:
    """Response hook: the body is read under the throughput floor."""
    if response.request.method == "HEAD":
        return
    size = response.headers.get("content-length")
    response.stream = _WatchedStream(response.stream, _Deadline(
        f"download from {_where(response.request.url)}", int(size) if size and size.isdigit() else None))


def _where(url: Any) -> str:
    """A URL for messages: no query (signed CDN links carry credentials there)."""
    text = str(url)
    return text.split("?", 1)[0]


class _Deadline:
    """Bytes moved per window; ``advance`` raises ``TransferStalledError`` below the floor."""

    def __init__(self, what: str, total: int | None) -> None:
        self.what = what
        self.total = total
        self.window = constants.STALL_WINDOW
        self.floor = constants.STALL_MIN_BYTES
        self.moved = 0
        self._mark = time.monotonic()
        self._mark_moved = 0

    def advance(self, nbytes: int) -> None:
        self.moved += nbytes
        now = time.monotonic()
        if now - self._mark < self.window:
            return
        need = self.floor if self.total is None else min(self.floor, self.total - self._mark_moved)
        in_window = self.moved - self._mark_moved
        if in_window < need and (self.total is None or self.moved < self.total):
            raise TransferStalledError(
                f"{self.what} stalled: {in_window} bytes in the last {now - self._mark:.1f} s, under the floor of "
                f"{self.floor} bytes per {self.window:g} s, after {self.moved}"
                + (f" of {self.total} bytes" if self.total is not None else " bytes")
            )
        self._mark, self._mark_moved = now, self.moved


def _httpx():
    """huggingface_hub's HTTP client module (``httpx2``; older clients use ``httpx``)."""
    try:
        import httpx2 as httpx
    except ImportError:
        import httpx  # type: ignore[no-redef]
    return httpx


def _causes(err: BaseException) -> Iterator[BaseException]:
    """``err`` and its causes (``__cause__``, else ``__context__``), each once."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


class _WatchedBody(_httpx().SyncByteStream):  # type: ignore[misc]
    """A request body sent in small pieces, each counted against the deadline."""

    def __init__(self, inner, deadline: _Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            for start in range(0, len(chunk), _UPLOAD_PIECE):
                piece = chunk[start : start + _UPLOAD_PIECE]
                self._deadline.advance(0)  # the previous piece's send time counts before this one leaves
                yield piece
                self._deadline.advance(len(piece))

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


class _WatchedStream(_httpx().SyncByteStream):  # type: ignore[misc]
    """A response body whose chunks are counted against the deadline."""

    def __init__(self, inner, deadline: _Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._deadline.advance(len(chunk))
            yield chunk

    def close(self) -> None:
        self._inner.close()


def is_stall(err: BaseException) -> bool:
    """A stalled transfer (throughput floor, or no byte within the read/write timeout) in the cause chain."""
    httpx = _httpx()
    return any(isinstance(c, (TransferStalledError, httpx.ReadTimeout, httpx.WriteTimeout)) for c in _causes(err))


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
    httpx = _httpx()
    for current in _causes(err):
        if isinstance(current, (httpx.TransportError, ConnectionError, TimeoutError)):
            return True
        status = status_of(current)
        if status is not None:
            return status in _TRANSIENT_STATUS or status >= 500
    return False


def _transient_reason(err: BaseException) -> str:
    """The root cause of a transient failure: ``HTTP 503`` or ``ConnectError: ...``."""
    for current in _causes(err):
        if isinstance(current, TransferStalledError):  # its text says where (file, byte); its cause only "timed out"
            return short(current)
        status = status_of(current)
        if status is not None:
            return f"HTTP {status}"
        if current.__cause__ is None and current.__context__ is None:
            return f"{type(current).__name__}: {short(current)}"
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
    return __version__
