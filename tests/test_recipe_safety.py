"""Hostile recipes: alias bombs, deep nesting, code-running tags. Each fails fast with a
RecipeError naming the line, and no message ever shows an expanded value."""

from __future__ import annotations

import time

import pytest

from ptq_core.errors import RecipeError
from ptq_core.recipe import load_recipe

JOB = "model: a/b\nscheme: W4A16\n"


def bomb(levels: int = 9, width: int = 9) -> str:
    """The classic "billion laughs": each level lists the previous one ``width`` times."""
    rows = ["ignore:", f"  - &l0 [{', '.join(['lol'] * width)}]"]
    rows += [f"  - &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return JOB + "\n".join(rows) + "\n"


@pytest.fixture(autouse=True, scope="module")
def _warm_imports():
    """Scheme checks import compressed-tensors on first use; keep that out of the time bounds."""
    load_recipe(JOB)


def refused(text: str, match: str) -> RecipeError:
    started = time.perf_counter()
    with pytest.raises(RecipeError, match=match) as info:
        load_recipe(text)
    # An unbounded expansion (the alias bomb) runs for hours; 5 s never flakes on a loaded 2-core
    # machine (0.5 s did) and still tells a refusal from a blow-up.
    assert time.perf_counter() - started < 5
    assert len(str(info.value)) < 400 and "lol" not in str(info.value)
    return info.value


def test_alias_bomb_fails_at_once():
    text = bomb()
    assert len(text.encode()) < 600  # the report's bomb was 413 bytes
    refused(text, r"^recipe, line 8: this value expands to more than 10000 values through aliases \(\*name\); "
                  "a recipe needs a few dozen")


def test_small_alias_bomb_still_gives_a_short_message():
    """Under the bounds, the value reaches the type check; the message describes it, never expands it."""
    refused(bomb(levels=3, width=9),
            r"^recipe, line 4: `ignore` must be a list of module names or 're:' regexes, got a list of 3 item\(s\)")


def test_too_many_aliases():
    text = JOB + "revision: &r main\nignore: [" + ", ".join(["*r"] * 101) + "]\n"
    refused(text, r"^recipe, line 4: more than 100 aliases \(\*name\); a recipe needs a few at most")


def test_self_reference():
    refused(JOB + "ignore: &a [lm_head, *a]\n", r"^recipe, line 3: a value refers to itself through an alias")


@pytest.mark.parametrize("depth", [33, 200_000])
def test_deep_nesting(depth):
    refused(JOB + "ignore: " + "[" * depth + "]" * depth + "\n", r"^recipe, line 3: values nested deeper than 32")


@pytest.mark.parametrize("value,line,shown", [
    ("!!python/object/apply:os.system ['touch {marker}']", 3, "!!python/object/apply:os.system"),
    ("!!python/name:os.system", 3, "!!python/name:os.system"),
    ("!custom lm_head", 3, "!custom"),
])
def test_unknown_tags_are_refused_not_run(tmp_path, value, line, shown):
    marker = tmp_path / "pwned"
    text = JOB + "ignore:\n  - " + value.format(marker=marker) + "\n"
    refused(text.replace("ignore:\n  - ", "ignore: "), rf"^recipe, line {line}: the tag '{shown}' is not allowed; "
                                                      "a recipe holds plain YAML values only")
    assert not marker.exists()


def test_tag_on_a_key_line_is_named(tmp_path):
    path = tmp_path / "jobs.yaml"
    path.write_text("jobs:\n  - model: a/b\n    scheme: W4A16\n    private: !!python/bool yes\n")
    with pytest.raises(RecipeError, match=r"jobs\.yaml, line 4: the tag '!!python/bool' is not allowed"):
        load_recipe(path)


def test_merge_keys_point_to_defaults():
    refused("base: &base {scheme: W4A16}\njobs:\n  - <<: *base\n    model: a/b\n",
            r"line 3: YAML merge keys \(`<<:`\) are not supported; put shared keys under `defaults:`")


def test_huge_values_are_described():
    err = refused(JOB + "revision: [" + ", ".join(["x"] * 5000) + "]\n",
                  r"line 3: `revision` must be a branch, tag or commit, got a list of 5000 item\(s\)")
    assert "x, x" not in str(err)
    refused(JOB.replace("a/b", "a/" + "b" * 5000), r"`model`: 'a/bbbbbbbb.*\.\.\. \(5002 characters\) is not a Hub repo id")


def test_oversized_recipe(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(JOB + "# " + "x" * 1_000_000 + "\n")
    with pytest.raises(RecipeError, match=r"big\.yaml' is \d+ bytes; a recipe is at most 1000000"):
        load_recipe(path)


def test_anchors_for_shared_lists_still_work():
    text = ("jobs:\n  - {model: a/b, scheme: W4A16, ignore: &ig [lm_head, 're:.*gate$']}\n"
            "  - {model: c/d, scheme: W4A16, ignore: *ig}\n")
    jobs = load_recipe(text)
    assert [job.ignore for job in jobs] == [("lm_head", "re:.*gate$")] * 2
