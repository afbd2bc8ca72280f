"""Sizes as people read them: one formatter and one ratio for every front end."""

from __future__ import annotations

import re

from .errors import InvalidOptionError

__all__ = ["compression_ratio", "format_bytes", "parse_size"]

_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
          "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)


def format_bytes(num_bytes: float) -> str:
    """Decimal units, as the Hub shows sizes: ``1_234_000_000`` -> ``'1.23 GB'``, ``512`` -> ``'512 B'``."""
    value = float(num_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{int(value)} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    return f"{value:.2f} TB"


def compression_ratio(size_before: int, size_after: int) -> float:
    """``size_before / size_after`` (2.0 means half the bytes); 0.0 when ``size_after`` is 0."""
    return size_before / size_after if size_after else 0.0


def parse_size(value: str | int, *, name: str = "size") -> int:
    """Bytes from ``20GB``, ``512 MB``, ``1.5GiB`` or a plain number (decimal units, as ``format_bytes``).

    Raises:
        InvalidOptionError: not a non-negative size.

    Example:
        >>> parse_size("20GB"), parse_size("1 KiB"), parse_size(7)
        (20000000000, 1024, 7)
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise InvalidOptionError(f"{name}={value} is negative; give a size such as 20GB.")
        return value
    match = _SIZE_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidOptionError(f"{name}={value!r} is not a size; write e.g. 20GB, 500MB or 1.5GiB.")
    number, unit = match.groups()
    return int(float(number) * _UNITS[(unit or "").lower()])
