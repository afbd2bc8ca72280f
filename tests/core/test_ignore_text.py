"""ptq_core/ignore_text.py: the one reader of ignore lists written as text (CLI, Action, Space)."""

from __future__ import annotations

import pytest

from ptq_core.ignore_text import parse_ignore_text
from ptq_core.matching import validate_ignore


@pytest.mark.parametrize(
    ("text", "entries"),
    [
        ("lm_head", ["lm_head"]),
        ("lm_head, re:.*embed_tokens$", ["lm_head", "re:.*embed_tokens$"]),
        ("lm_head,,  model.norm ,", ["lm_head", "model.norm"]),
        # a comma inside a pattern's braces, parentheses or class belongs to the pattern
        ("re:.*a{1,2}$", ["re:.*a{1,2}$"]),
        ("re:.*a{1,2}$, lm_head", ["re:.*a{1,2}$", "lm_head"]),
        ("re:.*\\.(q,k)_proj$,re:.*gate$", ["re:.*\\.(q,k)_proj$", "re:.*gate$"]),
        ("re:.*[,;]x$, y", ["re:.*[,;]x$", "y"]),
        ("re:.*[],]x$, y", ["re:.*[],]x$", "y"]),  # ']' first in a class is a member
        ("re:.*[^],]x$, y", ["re:.*[^],]x$", "y"]),
        ("re:a\\{,b", ["re:a\\{", "b"]),  # an escaped brace opens nothing
        ("re:.*(a|(b,c)),d", ["re:.*(a|(b,c))", "d"]),
        # lines, blank lines and comments
        ("lm_head\n\n  re:.*embed_tokens$ \n# the routers\n  # indented comment\nre:.*\\.gate$\n",
         ["lm_head", "re:.*embed_tokens$", "re:.*\\.gate$"]),
        ("re:.*a{1,\n2}$", ["re:.*a{1,", "2}$"]),  # a line ends an entry: braces do not span lines
        ("", []),
        (None, []),
        ("# only a comment\n\n", []),
    ],
)
def test_entries(text, entries):
    assert parse_ignore_text(text) == entries


def test_every_entry_of_a_well_formed_list_is_valid_for_the_matcher():
    text = "lm_head, re:.*a{1,2}$, re:.*(q|k)_proj$\nre:.*experts\\.\\d{1,3}\\.gate$"
    assert validate_ignore(parse_ignore_text(text)) == parse_ignore_text(text)


def test_the_old_comma_split_broke_a_pattern_and_this_one_does_not():
    # `cli.py` used to split every comma: the quantifier became two entries, the second not a module name
    assert "re:.*a{1,2}$".split(",") == ["re:.*a{1", "2}$"]
    assert parse_ignore_text("re:.*a{1,2}$") == ["re:.*a{1,2}$"]
