"""Environment, read once, and the defaults every front end shares.

Every environment variable ptq-hub honours is read here and nowhere else. An
explicit argument always beats the variable. ``HF_TOKEN`` and ``HF_ENDPOINT``
are also read by ``huggingface_hub`` itself; we read them only to decide
defaults and never log them.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InvalidOptionError

DEFAULT_SCHEME = "FP8_BLOCK"
"""The scheme every front end starts from (``ptq demo``, the Action's ``scheme`` input, the Space's
dropdown): FP8 weights in 128x128 blocks, near-lossless and served by vLLM on Hopper and newer.
Kept here, a leaf, so that ``ptq --help`` and the Space read it without loading compressed-tensors."""

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(value: str | bool | None, *, name: str = "value", default: bool = False, strict: bool = False) -> bool:
    """The one boolean parser: ``true``/``false`` (any case), plus 1/yes/on and 0/no/off unless ``strict``.

    Empty text or ``None`` means ``default``. ``strict`` is for GitHub Actions inputs,
    whose convention is exactly ``true``/``false``.

    Raises:
        InvalidOptionError: any other text (a typo such as ``ture`` must not silently mean false).
    """
    if isinstance(value, bool):
        return value
    text = (value or "").strip().lower()
    if not text:
        return default
    true, false = ({"true"}, {"false"}) if strict else (_TRUE, _FALSE)
    if text in true:
        return True
    if text in false:
        return False
    raise InvalidOptionError(f"{name} is {value!r}; write true or false.")


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return parse_bool(raw, name=name, default=default)
    except InvalidOptionError:
        return default


HF_ENDPOINT: str = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
"""Hub base URL; the tests point it at a loopback server."""

PTQ_HUB_CACHE: Path = Path(os.environ.get("PTQ_HUB_CACHE", Path.home() / ".cache" / "ptq-hub"))
"""Where downloads and temporary work folders go when the caller gives none."""

PTQ_DISABLE_PROGRESS: bool = _env_bool("PTQ_DISABLE_PROGRESS", False)
"""Mute terminal progress bars (CI logs); callbacks still run."""


def hf_token_from_env() -> str | None:
    """The token from ``HF_TOKEN`` (read at call time so tests and the Space can set it)."""
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    return token or None


def _env_seconds(name: str, default: float) -> float:
    """A positive number of seconds (or bytes) from ``name``; an unset, empty or invalid value means ``default``."""
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        return default
    return value if value > 0 else default


# --- transfer deadlines (issue 19) -------------------------------------------------
# huggingface_hub's shared session waits forever (``timeout=None``): a transfer that
# stalls after the headers, or trickles, would hold a job until the runner's limit.
# ``_http`` applies these to every request of that session, ours and the client's.
HTTP_CONNECT_TIMEOUT: float = _env_seconds("PTQ_HTTP_CONNECT_TIMEOUT", 10.0)
"""Seconds to open a connection (TCP and TLS) before the attempt counts as failed and is retried."""

HTTP_READ_TIMEOUT: float = _env_seconds("PTQ_HTTP_READ_TIMEOUT", 60.0)
"""Seconds without one byte received (or, uploading, accepted by the socket) before the attempt is retried.
A request with its own timeout (the client's file downloads use 10 s) keeps it."""

STALL_WINDOW: float = _env_seconds("PTQ_STALL_WINDOW", 60.0)
"""Seconds over which a transfer's throughput is measured: a body (download or upload) that moves
fewer than ``STALL_MIN_BYTES`` in one window has stalled, and is retried like a reset connection."""

STALL_MIN_BYTES: int = int(_env_seconds("PTQ_STALL_MIN_BYTES", 64 * 1024))
"""The throughput floor: bytes a transfer must move per ``STALL_WINDOW`` (64 KiB per 60 s by default),
or all its remaining bytes if fewer."""

RATE_LIMIT_MAX_WAIT: float = _env_seconds("PTQ_RATE_LIMIT_MAX_WAIT", 300.0)
"""The longest wait a 429's ``Retry-After`` / ``RateLimit`` may ask for; a longer one fails the call at once."""
