"""Ignore matching: exactly compressed-tensors' match_name, compiled once, bounded in time."""

from __future__ import annotations

import re
import time

import pytest
from compressed_tensors.utils.match import match_name as reference_match_name
from hypothesis import given, settings
from hypothesis import strategies as st

import ptq_core.matching as matching
from ptq_core.errors import CheckpointError, InvalidIgnoreError
from ptq_core.matching import IgnoreMatcher, match_name, validate_ignore
from ptq_core.schemes import DEFAULT_IGNORE

# Pieces that build both the plain shapes (string tests) and real regexes.
_PIECES = [".*", "^", "$", "a", "b", ".", "\\.", "_", "\\d", "+", "?", "(a|b)", "[ab]", "[^.]", "x{2}", "\n"]
_NAMES = st.text(alphabet="ab._1x\n", max_size=12)


@settings(max_examples=600, deadline=None)
@given(pattern=st.lists(st.sampled_from(_PIECES), max_size=6).map("".join), names=st.lists(_NAMES, max_size=6))
def test_same_answers_as_compressed_tensors(pattern, names):
    try:
        re.compile(pattern)
    except re.error:
        return
    entry = "re:" + pattern
    matcher = IgnoreMatcher([entry])
    for name in names:
        expected = reference_match_name(name, entry)
        assert match_name(name, entry) is expected, (pattern, name)
        assert (matcher.match(name) == entry) is expected, (pattern, name)
        if pattern:  # the same text as an exact name
            assert match_name(name, pattern) is reference_match_name(name, pattern)


@pytest.mark.parametrize("pattern", [
    f"{caret}{before}{literal}{after}{end}"
    for caret in ("", "^") for before in ("", ".*") for literal in ("", "a", r"a\.b", "ab")
    for after in ("", ".*") for end in ("", "$")
])
def test_every_plain_shape_against_compressed_tensors(pattern):
    entry = "re:" + pattern
    matcher = IgnoreMatcher([entry])
    for name in ["", "a", "ab", "xab", "abx", "a.b", "xa.bx", "ba", "a\nb", "ab\n", "x\nab", "aab"]:
        expected = reference_match_name(name, entry)
        assert match_name(name, entry) is expected, (pattern, name)
        assert (matcher.match(name) == entry) is expected, (pattern, name)


@pytest.mark.parametrize("entry,probe", [
    (r"re:.*embed_tokens$", str.endswith), (r"re:.*\.gate$", str.endswith), (r"re:^model\.norm", str.startswith),
    (r"re:.*mlp\.", str.__contains__), (r"re:lm_head$", str.__eq__), (r"re:.*experts.*", str.__contains__),
])
def test_common_shapes_skip_the_regex_engine(entry, probe):
    assert matching._compile(entry).probe is probe


def test_first_entry_in_order_wins_and_unused_entries_are_listed():
    matcher = IgnoreMatcher([r"re:.*proj$", "model.q_proj", r"re:.*never$", "lm_head", r"re:.*\.q_"])
    assert matcher.match("model.q_proj") == "re:.*proj$"
    assert matcher.match("model.k_proj") == "re:.*proj$"
    assert matcher.match("model.norm") is None
    assert matcher.unused() == ["re:.*never$", "lm_head"]


@pytest.mark.parametrize("ignore,message", [
    (None, r"ignore=None is not a list; pass a list of module names or 're:' patterns, \[\] to quantize every"),
    ("lm_head", r"ignore='lm_head' is a single string, which would be read character by character; pass a list: "
                r"ignore=\['lm_head'\]"),
    (b"lm_head", r"is a single string"),
    ({"lm_head": True}, r"ignore must be a list of module names or 're:' patterns, not a dict"),
    (5, r"not a int"),
    (["lm_head", None], r"ignore entry None must be a non-empty module name or 're:<regex>'"),
    ([""], r"ignore entry '' must be a non-empty module name"),
    ([3], r"ignore entry 3 must be"),
    (["re:("], r"ignore entry 're:\(' is not a valid regular expression \(missing \), unterminated subpattern"),
    (["re:" + "a" * 1001], r"is 1001 characters long; patterns are limited to 1000"),
    (["re:[[:alpha:]]"], r"has '\[' inside a character class \(POSIX classes such as \[\[:alpha:\]\] are not Python "
                         r"syntax\); write it as '\\\['"),
    (["re:a{e<=1}"], r"has a '\{' that is not a repeat count \{m,n\}; write a literal brace as '\\\{'"),
    (["re:((a{10}){10}){11}"], r"repeats a part 1100 times \(nested \{m,n\} counts\); keep it under 1000"),
    (["re:a{60000}"], r"repeats a part 60000 times"),
])
def test_validate_ignore_refuses(ignore, message):
    with pytest.raises(InvalidIgnoreError, match=message):
        validate_ignore(ignore)
    with pytest.raises(InvalidIgnoreError, match=message):
        IgnoreMatcher(ignore)


def test_validate_ignore_bounds_the_number_of_entries():
    assert matching.MAX_IGNORE_ENTRIES == 1000
    assert len(validate_ignore([f"re:.*layers\\.{i}\\.x$" for i in range(1000)])) == 1000
    with pytest.raises(InvalidIgnoreError, match=r"more than 1000 entries, the limit.*fewer 're:' patterns"):
        validate_ignore([f"re:.*layers\\.{i}\\.x$" for i in range(20_000)])
    # A generator is refused after the limit, not consumed whole.
    taken = []

    def endless():
        while True:
            taken.append(1)
            yield "lm_head"

    with pytest.raises(InvalidIgnoreError, match="more than 1000"):
        validate_ignore(endless())
    assert len(taken) == 1001
    assert len(validate_ignore(["a"] * 5000, max_entries=None)) == 5000


def test_validate_ignore_returns_a_new_list():
    given_ignore = ("lm_head", r"re:x\{2\}", "re:[{]", r"re:a{2,3}?", "re:[]a]", r"re:[\[]")
    assert validate_ignore(given_ignore) == list(given_ignore)
    assert validate_ignore(x for x in ["a"]) == ["a"]
    assert validate_ignore([]) == []


@pytest.mark.parametrize("pattern,name", [
    (r"(a|aa)+$", "a" * 60 + "!"),
    (r".*(x|xx)+y", "model." + "x" * 60),
])
def test_hostile_pattern_is_stopped_and_named(pattern, name):
    matcher = IgnoreMatcher(["lm_head", "re:" + pattern])
    started = time.perf_counter()
    with pytest.raises(InvalidIgnoreError, match=rf"ignore entry {re.escape(repr('re:' + pattern))} took more than "
                                                 r"0\.1 s on module '.*': it backtracks without bound"):
        matcher.match(name)
    assert time.perf_counter() - started < 1.0


def test_pattern_budget_over_many_names(monkeypatch):
    monkeypatch.setattr(matching, "PATTERN_BUDGET", 0.2)
    matcher = IgnoreMatcher([r"re:(a|aa)+$"])
    started = time.perf_counter()
    with pytest.raises(InvalidIgnoreError, match=r"ignore entry 're:\(a\|aa\)\+\$' took more than"):
        for length in range(10, 1000):
            matcher.match("a" * (length % 30) + "!")
    assert time.perf_counter() - started < 1.0


def test_overlong_module_names_are_not_given_to_a_regex():
    name = "model." + "a" * 2000
    assert IgnoreMatcher([r"re:.*a$"]).match(name) == r"re:.*a$"  # a string test, any length
    with pytest.raises(CheckpointError, match=r"module name 'model\.aaa.*\(2008 characters\) is 2006 characters "
                                              r"long; names longer than 1024 are not matched against 're:'"):
        IgnoreMatcher([r"re:model\.a+$"]).match(name)


def test_three_hundred_thousand_modules_are_fast():
    names = [f"model.layers.{i}.mlp.experts.{j}.up_proj" for i in range(100) for j in range(3000)]
    matcher = IgnoreMatcher([*DEFAULT_IGNORE, "model.layers.7.mlp.experts.12.up_proj"])
    started = time.perf_counter()
    hits = [matcher.match(name) for name in names]
    elapsed = time.perf_counter() - started
    assert hits.count("model.layers.7.mlp.experts.12.up_proj") == 1 and hits.count(None) == len(names) - 1
    assert elapsed < 1.0, elapsed
