"""Environment, read once.

Every environment variable ptq-hub honours is read here and nowhere else. An
explicit argument always beats the variable. ``HF_TOKEN`` and ``HF_ENDPOINT``
are also read by ``huggingface_hub`` itself; we read them only to decide
defaults and never log them.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InvalidOptionError

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
