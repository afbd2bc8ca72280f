"""YAML recipes (ptq_core/recipe.py): parsing, expansion, and errors that name the line and key."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest

from ptq_core import recipe as recipe_module
from ptq_core.errors import RecipeError
import ptq_core
from ptq_core.recipe import JOB_KEYS, RecipeJob, load_recipe


def _load(text: str) -> list[RecipeJob]:
    return load_recipe(textwrap.dedent(text).lstrip("\n"))


def test_single_job():
    (job,) = _load("""
        model: meta-llama/Llama-3.2-1B
        scheme: FP8_BLOCK
    """)
    assert job == RecipeJob(model="meta-llama/Llama-3.2-1B", scheme="FP8_BLOCK")
    assert job.line == 1
    built = job.to_job(workers=2)
    assert (built.source, built.scheme_name, built.target, built.private, built.revision, built.workers) == (
        "meta-llama/Llama-3.2-1B", "FP8_BLOCK", None, False, None, 2
    )
    assert built.ignore == ptq_core.DEFAULT_IGNORE  # no `ignore:` means the loader-safe defaults


def test_jobs_defaults_and_scheme_lists():
    jobs = _load("""
        defaults:
          private: true
          ignore: [lm_head]
        jobs:
          - model: Qwen/Qwen3-30B-A3B
            scheme: [fp8_block, NVFP4A16]
            target: my-org/Qwen3-30B-A3B-{scheme}
          - model: meta-llama/Llama-3.2-1B
            scheme: W4A16
            private: false
            ignore: null
            revision: 0123456
    """)
    assert [(j.model, j.scheme, j.target) for j in jobs] == [
        ("Qwen/Qwen3-30B-A3B", "FP8_BLOCK", "my-org/Qwen3-30B-A3B-FP8-BLOCK"),
        ("Qwen/Qwen3-30B-A3B", "NVFP4A16", "my-org/Qwen3-30B-A3B-NVFP4A16"),
        ("meta-llama/Llama-3.2-1B", "W4A16", None),
    ]
    assert [j.private for j in jobs] == [True, True, False]
    assert [j.ignore for j in jobs] == [("lm_head",), ("lm_head",), ()]
    assert jobs[2].revision == "0123456"  # an all-digit commit prefix stays text, leading zero included
    assert [j.line for j in jobs] == [5, 5, 8]
    assert jobs[0].to_job().ignore == ptq_core.DEFAULT_IGNORE  # lm_head is a default already: not repeated


def test_top_level_list_and_quoted_booleans():
    jobs = _load("""
        - model: a/b
          scheme: W8A16
          private: "yes"
        - {model: c/d, scheme: MXFP4A16, ignore: "re:.*gate$"}
    """)
    assert [j.scheme for j in jobs] == ["W8A16", "MXFP4A16"]
    assert jobs[0].private is True
    assert jobs[1].ignore == ("re:.*gate$",)


def test_ignore_adds_to_the_defaults_and_default_ignore_false_drops_them():
    (job,) = _load("model: a/b\nscheme: FP8_DYNAMIC\nignore: [re:.*o_proj$]\n")
    assert job.to_job().ignore == (*ptq_core.DEFAULT_IGNORE, "re:.*o_proj$")
    (job,) = _load("model: a/b\nscheme: FP8_DYNAMIC\ndefault_ignore: false\nignore: []\n")
    assert job.default_ignore is False
    assert job.to_job().ignore == ()  # quantize everything quantizable


def test_job_is_frozen_and_line_is_not_part_of_equality():
    a, b = RecipeJob("a/b", "FP8_BLOCK", line=1), RecipeJob("a/b", "FP8_BLOCK", line=7)
    assert a == b
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.scheme = "W4A16"  # type: ignore[misc]


def test_reads_files(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("model: a/b\nscheme: NVFP4A16\n")
    assert load_recipe(path)[0].scheme == "NVFP4A16"
    assert load_recipe(str(path))[0].scheme == "NVFP4A16"
    with pytest.raises(RecipeError, match="missing.yaml.*does not exist"):
        load_recipe(str(tmp_path / "missing.yaml"))


def test_error_messages_carry_the_file_name(tmp_path):
    path = tmp_path / "jobs.yml"
    path.write_text("model: a/b\nscheme: FP8_BLOCK\ntargte: x/y\n")
    with pytest.raises(RecipeError, match=r"jobs.yml, line 3: unknown key 'targte'. Did you mean 'target'\?"):
        load_recipe(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the recipe is empty"),
        ("model: a/b\nscheme: [FP8_BLOCK\n", "not valid YAML at line 3"),
        ("just a string", "a recipe is a job mapping"),
        ("model: a/b\n", r"line 1: the job has no `scheme:`"),
        ("scheme: FP8_BLOCK\n", r"line 1: the job has no `model:`"),
        ("model: a/b\nscheme: FP8_BLOCK\nsheme: W4A16\n", r"line 3: unknown key 'sheme'. Did you mean 'scheme'\?"),
        ("model: a/b\nscheme: FP8_BLOCK\nmodel: c/d\n", r"line 3: key 'model' is given twice"),
        ("model: not a repo\nscheme: FP8_BLOCK\n", r"line 1: `model`: 'not a repo' is not a valid Hub repo id"),
        ("model: justname\nscheme: FP8_BLOCK\n", r"line 1: `model`: The source repo id 'justname' needs its namespace"),
        ("model: ./folder\nscheme: FP8_BLOCK\n", r"line 1: `model`: './folder' is a file-system path"),
        ("model: a/b\nscheme: NVFP4\n", r"line 2: `scheme`: NVFP4 needs .*Pick NVFP4A16"),
        ("model: a/b\nscheme: FP8\n", r"line 2: `scheme`: FP8 needs static input activation scales.*FP8_DYNAMIC"),
        ("model: a/b\nscheme: NOPE\n", r"line 2: `scheme`: Unknown scheme 'NOPE'"),
        ("model: a/b\nscheme:\n  - W4A16\n  - NOPE\n", r"line 4: `scheme`: Unknown scheme 'NOPE'"),
        ("model: a/b\nscheme: [W4A16, NOPE]\ntarget: me/x-{scheme}\n", r"line 2: `scheme`: Unknown scheme 'NOPE'"),
        ("model: a/b\nscheme: []\n", r"line 2: `scheme` is an empty list"),
        ("model: a/b\nscheme: [W4A16, w4a16]\n", r"line 2: scheme 'W4A16' is listed twice"),
        ("model: a/b\nscheme: [W4A16, 3]\n", r"line 2: `scheme`: scheme must be a preset name"),
        ("model: a/b\nscheme: W4A16\nignore: 5\n", r"line 3: `ignore` must be a list"),
        ("model: a/b\nscheme: W4A16\nignore: ['re:(']\n", r"line 3: `ignore`: .*not a valid regular expression"),
        ("model: a/b\nscheme: W4A16\nobserver: [mse]\n", r"line 3: `observer` must be a non-empty string"),
        ("model: a/b\nscheme: W4A16\nprivate: maybe\n", r"line 3: private is 'maybe'; write true or false"),
        ("model: a/b\nscheme: W4A16\nprivate: 1\n", r"line 3: `private` must be true or false"),
        ("model: a/b\nscheme: W4A16\nrevision: ''\n", r"line 3: `revision`: revision='' must be a branch"),
        ("model: a/b\nscheme: W4A16\nrevision: 'a..b'\n", r"line 3: `revision`: revision='a..b' is not a branch"),
        ("model: a/b\nscheme: W4A16\ntarget: 'bad name/x'\n", r"line 3: `target`: target 'bad name/x' is not a valid"),
        ("model: a/b\nscheme: W4A16\ntarget: 'a/b/c'\n", r"line 3: `target`: target 'a/b/c' is not a valid"),
        (
            "model: a/b\nscheme: [W4A16, FP8_BLOCK]\ntarget: me/fixed\n",
            r"line 3: target 'me/fixed' would be shared by 2 schemes; put `\{scheme\}` in it",
        ),
        ("jobs: []\n", "the recipe lists no jobs"),
        ("jobs:\n  model: a/b\n", r"line 2: `jobs` must be a list"),
        ("jobs:\n  - model: a/b\n    scheme: W4A16\nmodel: c/d\n", r"line 4: key 'model' next to `jobs:`"),
        ("defaults:\n  private: true\n", r"line 1: `defaults:` given but no `jobs:` list"),
        ("defaults:\n  privat: true\njobs: [{model: a/b, scheme: W4A16}]\n", r"line 2: unknown key 'privat'"),
        ("jobs:\n  - [a, b]\n", r"line 2: each job must be a mapping"),
        ("1: a\n", r"line 1: keys must be strings"),
        (
            "jobs:\n  - {model: a/b, scheme: W4A16, target: me/x}\n  - {model: c/d, scheme: W4A16, target: me/x}\n",
            r"line 3: target 'me/x' is also the target of the job at line 2",
        ),
    ],
)
def test_errors_name_line_and_key(text, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(text if "\n" in text or not text else text + "\n")


def test_not_a_string_or_path():
    with pytest.raises(RecipeError, match="path or YAML text"):
        load_recipe(42)  # type: ignore[arg-type]


def test_documented_keys_match_the_parser():
    doc = recipe_module.__doc__ or ""
    for key in JOB_KEYS:
        assert f"\n{key} " in doc, f"{key} is not documented in the module docstring"


def test_observer_key_is_canonical_and_checked():
    (job,) = _load("model: a/b\nscheme: W4A16\nobserver: MSE\n")
    assert job.observer == "memoryless_mse"
    assert job.to_job().observer == "memoryless_mse"
    with pytest.raises(RecipeError, match=r"line 3: `observer`: The 'imatrix_mse' observer"):
        _load("model: a/b\nscheme: W4A16\nobserver: imatrix_mse\n")
