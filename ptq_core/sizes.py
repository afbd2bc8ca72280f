"""Sizes as people read them: one formatter and one ratio for every front end."""

from __future__ import annotations

__all__ = ["compression_ratio", "format_bytes"]


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
