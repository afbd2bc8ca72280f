"""The one reader of an ignore list written as text: the CLI's ``--ignore``, the Action's
``ignore`` input and the Space's ignore box all go through :func:`parse_ignore_text`.

The syntax:

* one or more entries per line; blank lines and lines starting with ``#`` are dropped;
* a comma separates entries, except inside a ``re:`` pattern's parentheses, brackets or
  braces, where it belongs to the pattern: ``re:.*a{1,2}$`` and ``re:.*(q,k)_proj`` stay
  one entry each. Module names never contain a comma, so a comma outside those is always a
  separator (``lm_head, re:.*embed_tokens$`` is two entries).

Each entry is then checked by ``matching.validate_ignore`` (``make_job`` does it).
"""

from __future__ import annotations

__all__ = ["parse_ignore_text"]

_OPEN = {"(": ")", "{": "}"}


def parse_ignore_text(text: str | None) -> list[str]:
    """Ignore entries in ``text``, in order, stripped (see the module doc for the syntax).

    Example:
        >>> parse_ignore_text("lm_head, re:.*a{1,2}$\\n# routers\\nre:.*\\\\.gate$")
        ['lm_head', 're:.*a{1,2}$', 're:.*\\\\.gate$']
    """
    entries: list[str] = []
    for line in (text or "").splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            entries += _split_line(stripped)
    return entries


def _split_line(line: str) -> list[str]:
    """Entries of one line: split at commas that are not inside a ``re:`` pattern's groups."""
    entries: list[str] = []
    start = 0
    while start <= len(line):
        end = _entry_end(line, start)
        entry = line[start:end].strip()
        if entry:
            entries.append(entry)
        start = end + 1
    return entries


def _entry_end(line: str, start: int) -> int:
    """Index of the comma that ends the entry starting at ``start`` (``len(line)`` if none)."""
    if not line[start:].lstrip().startswith("re:"):
        comma = line.find(",", start)
        return len(line) if comma < 0 else comma
    closers: list[str] = []  # the brackets a comma must be outside of to end the pattern
    in_class = False
    i = start
    while i < len(line):
        char = line[i]
        if char == "\\":
            i += 2  # an escaped character is never a bracket or a separator
            continue
        if in_class:
            # a ']' right after '[' or '[^' is a literal member of the class
            if char == "]" and line[i - 1] != "[" and line[i - 2 : i] != "[^":
                in_class = False
        elif char == "[":
            in_class = True
        elif char in _OPEN:
            closers.append(_OPEN[char])
        elif closers and char == closers[-1]:
            closers.pop()
        elif char == "," and not closers:
            return i
        i += 1
    return len(line)
