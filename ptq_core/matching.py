"""Module-name matching for ``ignore`` lists and targets, with compressed-tensors' semantics, bounded.

compressed-tensors (``match_name``) reads an entry as an exact module name, or, with a
``re:`` prefix, as a regular expression applied with ``re.match`` (anchored at the start,
not at the end). The loader applies the same rule to the ``ignore`` list we record in
``config.json``, so matching here must agree with it exactly, or a module would be
quantized while the config says it is not.

In the Space both the patterns and the module names come from remote users, and
``re`` cannot be interrupted: ``re:(a+)+$`` against a long name backtracks for hours.
So each pattern is first checked with ``re`` (the reference: what it refuses, we refuse),
then matched with the ``regex`` package, whose ``timeout=`` stops a runaway match, under
a per-call and a per-pattern time budget and a name-length bound. Syntax that ``regex``
reads differently from ``re`` (POSIX classes, fuzzy ``{e<=1}`` braces) is refused, and
nested counted repeats are bounded because ``regex`` unrolls them when compiling.
Patterns of the common shapes (``.*suffix$``, ``prefix``, ``.*part``) never reach a
regex engine: they are plain string tests, which is what keeps 300k module names fast.

Example:
    >>> matcher = IgnoreMatcher(["lm_head", r"re:.*\\.gate$"])
    >>> matcher.match("model.layers.0.mlp.gate"), matcher.match("model.layers.0.mlp.up_proj")
    ('re:.*\\\\.gate$', None)
    >>> matcher.unused()
    ['lm_head']
"""

from __future__ import annotations

import functools
import itertools
import re
import time
import warnings
from collections.abc import Iterable, Mapping
from typing import Callable

import regex

from .errors import CheckpointError, InvalidIgnoreError

__all__ = ["MAX_IGNORE_ENTRIES", "IgnoreMatcher", "match_name", "validate_ignore"]

REGEX_PREFIX = "re:"
MAX_PATTERN_LENGTH = 1000
MAX_IGNORE_ENTRIES = 1000  # a caller's list; each re: entry is tried on every module (the Space's CPU)
MAX_NAME_LENGTH = 1024  # real module names are < 200 characters
MATCH_TIMEOUT = 0.1  # seconds, one name against one pattern
PATTERN_BUDGET = 2.0  # seconds, one pattern against every name of one plan
_MAX_REPEAT = 1000  # product of nested {m,n} counts: regex unrolls them when compiling

# A pattern that is a literal, optionally led by ``.*`` and/or followed by ``.*`` / ``$``.
_LITERAL_SHAPE = re.compile(r"\^?(\.\*)?((?:[^.^$*+?{}\[\]\\|()]|\\[!-/:-@\[-`{-~])*)(\.\*)?(\$)?", re.DOTALL)
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)
_QUANTIFIER = re.compile(r"\{(\d+)(?:(,)(\d*))?\}|\{,(\d+)\}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def validate_ignore(ignore: object, *, max_entries: int | None = MAX_IGNORE_ENTRIES) -> list[str]:
    """Check an ignore list; return its entries as a new list, in order.

    Args:
        ignore: an iterable of exact module names and ``re:`` patterns (``[]`` for none).
        max_entries: the most entries accepted (``MAX_IGNORE_ENTRIES``); ``None``: no bound,
            for lists made of entries already bounded at the front door.

    Raises:
        InvalidIgnoreError: ``ignore`` is None, a single string or a mapping; it has more than
            ``max_entries`` entries; an entry is
            not a string or is empty; a pattern does not compile with ``re``, is longer
            than 1000 characters, uses syntax the bounded matcher reads differently, or
            nests counted repeats beyond 1000 copies.

    Example:
        >>> validate_ignore(("lm_head", "re:.*embed_tokens$"))
        ['lm_head', 're:.*embed_tokens$']
    """
    if ignore is None:
        raise InvalidIgnoreError(
            "ignore=None is not a list; pass a list of module names or 're:' patterns, [] to quantize every "
            "targeted module, or DEFAULT_IGNORE for the loader-safe defaults."
        )
    if isinstance(ignore, (str, bytes)):
        raise InvalidIgnoreError(
            f"ignore={_short(ignore)} is a single string, which would be read character by character; "
            f"pass a list: ignore=[{_short(ignore)}]."
        )
    if isinstance(ignore, Mapping) or not isinstance(ignore, Iterable):
        raise InvalidIgnoreError(
            f"ignore must be a list of module names or 're:' patterns, not a {type(ignore).__name__}."
        )
    # islice: a generator of a million entries is refused after max_entries + 1, not listed whole
    entries = list(ignore if max_entries is None else itertools.islice(ignore, max_entries + 1))
    if max_entries is not None and len(entries) > max_entries:
        raise InvalidIgnoreError(
            f"The ignore list has more than {max_entries} entries, the limit: each 're:' entry is tried on every "
            "module name. Merge entries into fewer 're:' patterns (re:model\\.layers\\.\\d+\\.mlp\\.gate$ covers "
            "every layer's router)."
        )
    for entry in entries:
        _compile(entry)
    return entries


@functools.lru_cache(maxsize=512)
def _compile_cached(entry: str) -> _Pattern:
    return _Pattern(entry)


def _compile(entry: object) -> _Pattern:
    if not isinstance(entry, str) or not entry:
        raise InvalidIgnoreError(f"ignore entry {_short(entry)} must be a non-empty module name or 're:<regex>'.")
    return _compile_cached(entry)


class _Pattern:
    """One entry, compiled: an exact name, a plain string test, or a bounded regex."""

    def __init__(self, entry: str) -> None:
        self.entry = entry
        self.exact: str | None = None
        self.probe: Callable[[str, str], bool] | None = None  # str.endswith & co: (name, literal)
        self.literal = ""
        self.regex: regex.Pattern | None = None
        if not entry.startswith(REGEX_PREFIX):
            self.exact = entry
            return
        pattern = entry[len(REGEX_PREFIX):]
        if len(pattern) > MAX_PATTERN_LENGTH:
            raise InvalidIgnoreError(
                f"ignore entry {_short(entry)} is {len(pattern)} characters long; patterns are limited to "
                f"{MAX_PATTERN_LENGTH}."
            )
        try:
            with warnings.catch_warnings():  # "possible nested set": refused below with a reason
                warnings.simplefilter("ignore", FutureWarning)
                re.compile(pattern)
        except (re.error, OverflowError, RecursionError) as err:
            raise InvalidIgnoreError(
                f"ignore entry {_short(entry)} is not a valid regular expression ({err}); "
                "write it as 're:<python regex>', e.g. 're:.*mlp\\.gate$'."
            ) from err
        problem = _syntax_problem(pattern)
        if problem:
            raise InvalidIgnoreError(f"ignore entry {_short(entry)} {problem}")
        try:
            self.regex = regex.compile(pattern, flags=regex.VERSION0)
        except regex.error as err:
            raise InvalidIgnoreError(
                f"ignore entry {_short(entry)} cannot be matched with a time bound ({err}); simplify it."
            ) from err
        shape = _LITERAL_SHAPE.fullmatch(pattern)
        if shape:
            any_before, literal, any_after, end = shape.groups()
            self.literal = _UNESCAPE.sub(r"\1", literal)
            # For a name without a newline: ``.*`` matches any run of characters and ``$``
            # the end, so ``.*L$`` is endswith, ``.*L`` is "in", ``L$`` is ==, ``L`` startswith.
            if any_before:
                self.probe = str.endswith if end and not any_after else str.__contains__
            else:
                self.probe = str.__eq__ if end and not any_after else str.startswith

    def test(self, name: str, timeout: float = MATCH_TIMEOUT) -> bool:
        """``re.match(pattern, name)`` is not None (or ``name == entry``), bounded in time."""
        if self.exact is not None:
            return name == self.exact
        # ``.`` and ``$`` treat a newline specially; a name with one takes the regex path.
        if self.probe is not None and "\n" not in name:
            return self.probe(name, self.literal)
        if len(name) > MAX_NAME_LENGTH:
            raise CheckpointError(
                f"module name {_short(name)} is {len(name)} characters long; names longer than {MAX_NAME_LENGTH} "
                f"are not matched against 're:' patterns such as {_short(self.entry)}."
            )
        try:
            return self.regex.match(name, timeout=timeout) is not None
        except TimeoutError as err:
            raise InvalidIgnoreError(
                f"ignore entry {_short(self.entry)} took more than {timeout:.2g} s on module {_short(name)}: it "
                "backtracks without bound (nested quantifiers such as (a+)+); simplify it."
            ) from err


def _syntax_problem(pattern: str) -> str | None:
    """Why ``regex`` (VERSION0) would not read ``pattern`` as ``re`` does, or compile it slowly; else None."""
    weights = [1]  # the largest unrolled count inside each open group
    last = 1  # the count of the last atom, for a quantifier that follows it
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 2
            last = 1
            continue
        if char == "[":
            end = _class_end(pattern, i)
            body = pattern[i + 1:end]
            if re.search(r"(?<!\\)\[", body.replace("\\\\", "")):
                return ("has '[' inside a character class (POSIX classes such as [[:alpha:]] are not Python "
                        "syntax); write it as '\\['.")
            i = end + 1
            last = 1
        elif char == "(":
            weights.append(1)
            i += 1
            last = 1
            continue
        elif char == ")":
            last = weights.pop() if len(weights) > 1 else 1
            i += 1
        elif char == "{":
            quantifier = _QUANTIFIER.match(pattern, i)
            if quantifier is None:
                return "has a '{' that is not a repeat count {m,n}; write a literal brace as '\\{'."
            low, comma, high, only_high = quantifier.groups()
            count = int(only_high or high or low)
            last *= max(count, 1)
            if last > _MAX_REPEAT:
                return f"repeats a part {last} times (nested {{m,n}} counts); keep it under {_MAX_REPEAT}."
            i = quantifier.end()
        else:
            i += 1
            last = 1
        weights[-1] = max(weights[-1], last)
    return None


def _class_end(pattern: str, start: int) -> int:
    """Index of the ``]`` closing the class opened at ``start`` (``re`` already accepted it)."""
    i = start + 1
    if i < len(pattern) and pattern[i] == "^":
        i += 1
    if i < len(pattern) and pattern[i] == "]":  # a leading ']' is a literal
        i += 1
    while pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    return i


def match_name(name: str, target: str) -> bool:
    """compressed-tensors' ``match_name``: ``re:`` means ``re.match``, else exact equality; bounded.

    Raises:
        InvalidIgnoreError: ``target`` is not a valid pattern, or runs past ``MATCH_TIMEOUT``.
    """
    return _compile(target).test(name)


class IgnoreMatcher:
    """An ignore list compiled once: the first entry matching a module, and entries never matched.

    Exact names are one dict lookup; every ``re:`` pattern has a time budget of
    ``PATTERN_BUDGET`` seconds over the matcher's life (one plan), so a slow pattern
    fails the plan instead of stalling it. Safe to share between threads.
    """

    def __init__(self, entries: Iterable[str]) -> None:
        """Raises: InvalidIgnoreError, as ``validate_ignore`` (without its count bound: a caller's
        list is bounded at the front door, ``make_job``; the planner joins it with the model's defaults)."""
        self.entries: tuple[str, ...] = tuple(validate_ignore(entries, max_entries=None))
        self._exact: dict[str, list[int]] = {}
        self._patterns: list[tuple[int, _Pattern]] = []
        for index, entry in enumerate(self.entries):
            compiled = _compile(entry)
            if compiled.exact is not None:
                self._exact.setdefault(entry, []).append(index)
            else:
                self._patterns.append((index, compiled))
        self._used = [False] * len(self.entries)
        self._spent = [0.0] * len(self.entries)
        # The usual lists (DEFAULT_IGNORE) are all ``.*suffix$``: one C-level endswith over
        # every suffix rejects the modules none of them matches (most of a model).
        self._suffixes = tuple(p.literal for _, p in self._patterns if p.probe is str.endswith)
        self._suffix_only = len(self._suffixes) == len(self._patterns)

    def match(self, module: str) -> str | None:
        """The first entry (in list order) that matches ``module``, or None.

        Raises:
            InvalidIgnoreError: a pattern ran past its time bound (the message names it).
            CheckpointError: ``module`` is longer than ``MAX_NAME_LENGTH`` and a regex must read it.
        """
        exact = self._exact.get(module)
        if exact is None and self._suffix_only and "\n" not in module and not module.endswith(self._suffixes):
            return None
        hit = None
        if exact is not None:
            hit = exact[0]
            for index in exact:
                self._used[index] = True
        for index, pattern in self._patterns:
            # After a hit, later patterns are only tried to learn whether they are used at all.
            if hit is not None and index > hit and self._used[index]:
                continue
            if self._test(index, pattern, module):
                self._used[index] = True
                if hit is None or index < hit:
                    hit = index
        return None if hit is None else self.entries[hit]

    def _test(self, index: int, pattern: _Pattern, module: str) -> bool:
        if pattern.probe is not None and "\n" not in module:
            return pattern.probe(module, pattern.literal)
        remaining = PATTERN_BUDGET - self._spent[index]
        if remaining <= 0:
            raise InvalidIgnoreError(
                f"ignore entry {_short(pattern.entry)} took more than {PATTERN_BUDGET:.2g} s over this model's "
                "module names; simplify it (avoid nested quantifiers such as (a+)+)."
            )
        started = time.perf_counter()
        try:
            return pattern.test(module, timeout=min(MATCH_TIMEOUT, remaining))
        finally:
            self._spent[index] += time.perf_counter() - started

    def unused(self) -> list[str]:
        """Entries that matched no module given to ``match`` so far (for a warning line)."""
        return [entry for entry, used in zip(self.entries, self._used) if not used]
