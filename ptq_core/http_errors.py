"""What a failed Hub request means: transient or not, its status, the wait a 429 asks, a stall.

The questions ``HubHttp.call`` (``_http.py``) and the staging commit ask of a client error,
answered from the whole cause chain (huggingface_hub wraps httpx's errors, and ours wrap
theirs), with no request made.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Iterator, Mapping

from .errors import TransferStalledError

__all__ = [
    "causes",
    "httpx_module",
    "is_rate_limited",
    "is_stall",
    "is_transient",
    "rate_limit_asked",
    "rate_limit_wait",
    "short",
    "status_of",
    "transient_reason",
]

_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def httpx_module():
    """huggingface_hub's HTTP client module (``httpx2``; older clients use ``httpx``)."""
    try:
        import httpx2 as httpx
    except ImportError:
        import httpx  # type: ignore[no-redef]
    return httpx


def causes(err: BaseException) -> Iterator[BaseException]:
    """``err`` and its causes (``__cause__``, else ``__context__``), each once."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_transient(err: BaseException) -> bool:
    """Connection errors, timeouts and HTTP 408/429/5xx, anywhere in the cause chain."""
    httpx = httpx_module()
    for current in causes(err):
        if isinstance(current, (httpx.TransportError, ConnectionError, TimeoutError)):
            return True
        status = status_of(current)
        if status is not None:
            return status in _TRANSIENT_STATUS or status >= 500
    return False


def transient_reason(err: BaseException) -> str:
    """The root cause of a transient failure: ``HTTP 503`` or ``ConnectError: ...``."""
    for current in causes(err):
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


def is_stall(err: BaseException) -> bool:
    """A stalled transfer (throughput floor, or no byte within the read/write timeout) in the cause chain."""
    httpx = httpx_module()
    return any(isinstance(c, (TransferStalledError, httpx.ReadTimeout, httpx.WriteTimeout)) for c in causes(err))


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


def rate_limit_asked(err: BaseException) -> float | None:
    """The wait a 429 in ``err``'s cause chain asks for, if it names one."""
    root = _rooted(err)
    if status_of(root) != 429:
        return None
    headers = getattr(getattr(root, "response", None), "headers", None)
    return rate_limit_wait(headers) if headers is not None else None


def _rooted(err: BaseException) -> BaseException:
    """The first error in the cause chain that carries an HTTP response, else ``err``."""
    return next((current for current in causes(err) if status_of(current) is not None), err)


def is_rate_limited(err: BaseException) -> bool:
    """An HTTP 429 answer in ``err``'s cause chain."""
    return status_of(_rooted(err)) == 429
