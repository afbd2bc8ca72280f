"""Tokens out of every message and log line, ours and third-party libraries' alike.

The token reaches text in three ways: our own messages (an error that quotes a
URL or a server reply), third-party debug logs (``ptq -vv`` turns on httpcore,
whose trace of the response headers shows an ``Authorization`` header that a
server echoed back), and tracebacks. ``redact`` cleans one string;
``RedactingFilter`` cleans a log record (message, arguments, traceback);
``install_redaction`` puts the filter on every handler that exists and on
every record created from then on, third-party loggers included.

Example:
    >>> redact("GET /api/whoami Authorization: Bearer hf_abcdefghijklmnopqrstuvwxyz")
    'GET /api/whoami Authorization: Bearer ***'
"""

from __future__ import annotations

import logging
import re
from typing import Callable
from urllib.parse import quote

__all__ = ["RedactingFilter", "install_redaction", "redact", "secret_forms"]

THIRD_PARTY_LOGGERS = ("httpx", "httpcore", "huggingface_hub", "urllib3")
"""Libraries whose debug logs can carry request or response headers."""

# Hub user tokens (hf_ + 34 alphanumerics), OAuth (hf_oauth_...) and org API tokens.
_TOKEN_SHAPED = re.compile(r"\b(hf|api_org)_[A-Za-z0-9_]{20,}")
# An Authorization header however it is printed: "Authorization: x", {'authorization': 'x'},
# (b'Authorization', b'x'), authorization=x. The scheme word (Bearer, Basic...) is kept.
_AUTHORIZATION = re.compile(
    r"""(?i)(\bauthorization\b['"]?\s*[:=,]\s*b?['"]?)(?:([a-z]+)\s+(?=\S))?[^'"\r\n,)}\]&]*"""
)
_BEARER = re.compile(r"(?i)(\bbearer\s+)(?!\*\*\*)[^\s'\",;)}\]]+")
_URL_PASSWORD = re.compile(r"(://[^/\s:@]+:)[^/\s@]+@")
_MIN_TOKEN_LENGTH = 8  # replacing a 1-character "token" would shred the text


def secret_forms(token: str | None) -> list[str]:
    """The token and the forms of it that can reach a log (URL-encoded), longest first."""
    if not token or len(token) < _MIN_TOKEN_LENGTH:
        return []
    return sorted({token, quote(token, safe="")}, key=len, reverse=True)


def redact(text: str, token: str | None = None) -> str:
    """``text`` with the token, Authorization values, bearer values and token-shaped strings masked.

    Args:
        text: any message.
        token: the caller's token, masked wherever it appears even if it does not look like one.

    Returns:
        The text with each secret replaced by ``***`` (``hf_***`` for a token-shaped string).
    """
    for form in secret_forms(token):
        text = text.replace(form, "***")
    text = _AUTHORIZATION.sub(lambda m: f"{m.group(1)}{m.group(2) + ' ' if m.group(2) else ''}***", text)
    text = _BEARER.sub(r"\1***", text)
    text = _TOKEN_SHAPED.sub(lambda m: f"{m.group(1)}_***", text)
    return _URL_PASSWORD.sub(r"\1***@", text)


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's message, arguments, traceback and stack (never drops a record).

    The message is formatted here (``msg % args``) and stored back with no arguments,
    because an argument can be any object whose ``repr`` holds the secret (httpcore
    logs header lists as tuples of bytes).

    Args:
        token_getter: returns the current token (or None), so a token that does not look
            like one is masked too; called once per record.
    """

    def __init__(self, token_getter: Callable[[], str | None] | None = None) -> None:
        super().__init__()
        self.token_getter = token_getter

    def filter(self, record: logging.LogRecord) -> bool:
        token = self.token_getter() if self.token_getter is not None else None
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not hide the line
            message = f"{record.msg} {record.args!r}"
        record.msg, record.args = redact(message, token), None
        if record.exc_info and not record.exc_text:
            # Formatters cache the traceback text here and print the cached copy.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, token)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, token)
        return True


def install_redaction(token_getter: Callable[[], str | None] | None = None) -> RedactingFilter:
    """Mask secrets in every log record from now on; call it after logging is configured.

    The filter goes on the root logger's handlers, on ``logging.lastResort``, and on the
    httpx/httpcore/huggingface_hub/urllib3 loggers and every handler they or their
    children have (huggingface_hub has its own). A logger's filter only sees records
    logged at that very logger, not its children's, so the records themselves are also
    cleaned when they are created (the log record factory), which covers handlers and
    loggers created later. Calling it again replaces the previous filter.

    Args:
        token_getter: as for ``RedactingFilter``.

    Returns:
        The installed filter.

    Example:
        >>> install_redaction(lambda: token)  # doctest: +SKIP
    """
    new = RedactingFilter(token_getter)
    for holder in _filter_holders():
        for old in [f for f in holder.filters if isinstance(f, RedactingFilter)]:
            holder.removeFilter(old)
        holder.addFilter(new)
    previous = logging.getLogRecordFactory()
    inner = getattr(previous, "_ptq_inner", previous)

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = inner(*args, **kwargs)
        new.filter(record)
        return record

    factory._ptq_inner = inner  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
    return new


def _filter_holders() -> list[logging.Filterer]:
    holders: list[logging.Filterer] = list(logging.getLogger().handlers)
    if logging.lastResort is not None:
        holders.append(logging.lastResort)
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and any(
            name == prefix or name.startswith(prefix + ".") for prefix in THIRD_PARTY_LOGGERS
        ):
            holders.append(logger)
            holders.extend(logger.handlers)
    for prefix in THIRD_PARTY_LOGGERS:
        if logging.getLogger(prefix) not in holders:
            holders.append(logging.getLogger(prefix))
    return list(dict.fromkeys(holders))
