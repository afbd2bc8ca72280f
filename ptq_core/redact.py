"""Token redaction: the one place that decides what a secret looks like in text.

Leaf module (stdlib only): the Hub layer, the CLI, the Action and the Space all
redact through :func:`redact`, so a message shown anywhere has been cleaned the
same way.
"""

from __future__ import annotations

import re
from urllib.parse import quote

__all__ = ["redact", "secret_forms"]

_TOKEN_PATTERN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
_BEARER_PATTERN = re.compile(r"(?i)(bearer\s+)[^\s'\"]+")


def secret_forms(token: str | None) -> list[str]:
    """The token and the forms of it that can reach a log (URL-encoded), longest first."""
    if not token:
        return []
    return sorted({token, quote(token, safe="")}, key=len, reverse=True)


def redact(text: str, token: str | None = None) -> str:
    """Remove the token, in every form, and anything shaped like a Hub token or a bearer header."""
    for form in secret_forms(token):
        text = text.replace(form, "***")
    text = _TOKEN_PATTERN.sub("hf_***", text)
    return _BEARER_PATTERN.sub(r"\1***", text)
