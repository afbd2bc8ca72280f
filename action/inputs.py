"""The step's inputs, parsed and checked before anything touches the network.

``action.yml`` hands every input over as an environment variable (``model`` ->
``INPUT_MODEL``); ``read_request`` turns them into one checked ``Request``: booleans are
exactly ``true``/``false``, a recipe is loaded and validated whole, and an input that a
recipe replaces is refused next to ``config`` rather than ignored.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import ptq_core
from ptq_core.constants import DEFAULT_SCHEME, parse_bool
from ptq_core.ignore_text import parse_ignore_text
from ptq_core._http import resolve_token
from ptq_core.job import Job
from ptq_core.errors import InvalidOptionError, PtqError, RecipeError
from ptq_core.workers import parse_count

# Inputs a recipe replaces: giving one next to `config` is refused rather than ignored.
_RECIPE_INPUTS = ("model", "ignore", "default-ignore", "observer", "target-repo", "private", "revision", "rotate")
# action.yml's defaults arrive as values: equal to these, an input counts as not given.
_INPUT_DEFAULTS = {"scheme": DEFAULT_SCHEME, "default-ignore": "true"}
# make_job names the argument an error is about (PtqError.option); the step names its input.
_OPTION_INPUTS = {
    "source": "model", "scheme": "scheme", "ignore": "ignore", "observer": "observer", "target": "target-repo",
    "revision": "revision", "device": "device", "workers": "max-workers", "disk_budget": "disk-budget",
    "part": "part", "tp": "tp", "rotate": "rotate",
}


@dataclass(frozen=True)
class Request:
    """Everything the step was asked to do, checked."""

    jobs: tuple[Job, ...]
    from_recipe: bool
    token: str | None
    parts: int | None = None  # plan a multi-part job: write the matrix, quantize nothing
    finalize: int | None = None  # the last step of a multi-part job: make the one commit
    on_jobs: str | None = None  # run on Hugging Face Jobs: a flavor, or "auto" (the plan's pick)
    job_spec: tuple[str, str, dict] | None = None  # (model, scheme, make_job options): what a Job is sent
    collection: str | None = None  # a collection title: the pushed repos are added to it
    several: bool = False  # several schemes of one model: one read, one repo each (outputs as lists)


# --- inputs ------------------------------------------------------------------
def read_input(environ: Mapping[str, str], name: str) -> str:
    """The input ``name`` (kebab-case) as ``action.yml`` passed it: ``INPUT_<NAME>``, stripped."""
    return environ.get("INPUT_" + name.upper().replace("-", "_"), "").strip()


def parse_bool_input(name: str, text: str, *, default: bool = False) -> bool:
    """A boolean input: exactly ``true`` or ``false`` (any case); empty means ``default``.

    Raises:
        InvalidOptionError: any other text; a typo such as ``ture`` must not mean false.
    """
    return parse_bool(text, name=f"Input `{name}`", default=default, strict=True)


def read_token(environ: Mapping[str, str]) -> str | None:
    """The token the core will use: the ``hf-token`` input, else ``HF_TOKEN``, else a cached login.

    Resolving it here, exactly as the core does, lets the step mask every token it
    might print, a cached ``hf auth login`` one included.
    """
    return resolve_token(read_input(environ, "hf-token") or None, required=False)


def read_request(environ: Mapping[str, str]) -> Request:
    """Parse and check the inputs; nothing here touches the network.

    The scheme, the ignore list and the repo ids of single-model inputs are checked by
    ``quantize_to_hub`` itself, before its first request.

    Raises:
        InvalidOptionError: a bad boolean or ``max-workers``, no ``model`` and no ``config``,
            or an input that a recipe replaces given next to ``config``.
        RecipeError: the recipe file is missing or invalid (the message names line and key).
    """
    overwrite = parse_bool_input("overwrite", read_input(environ, "overwrite"))
    private = parse_bool_input("private", read_input(environ, "private"))
    default_ignore = parse_bool_input("default-ignore", read_input(environ, "default-ignore"), default=True)
    rotate = parse_bool_input("rotate", read_input(environ, "rotate"))
    workers = read_input(environ, "max-workers") or "1"  # a number or `auto`: make_job checks and resolves it
    device = read_input(environ, "device") or None
    parts = _count_input(environ, "parts")
    finalize = _count_input(environ, "finalize")
    tp = read_input(environ, "tp") or None
    part = read_input(environ, "part") or None
    if sum(x is not None for x in (parts, finalize, part)) > 1:
        raise InvalidOptionError(
            "Inputs `parts`, `part` and `finalize` are the three steps of a multi-part job; give one per step."
        )
    config = read_input(environ, "config")
    scheme = read_input(environ, "scheme") or DEFAULT_SCHEME
    on_jobs = read_input(environ, "on-jobs") or None
    collection = read_input(environ, "collection") or None
    if on_jobs and config:
        raise InvalidOptionError("Input `on-jobs` runs one model (`model`), not a recipe; drop one of them.")

    if config:
        jobs = _recipe_jobs(environ, config, split=bool(parts or finalize or part),
                            overwrite=overwrite, device=device, workers=workers, tp=tp)
    else:
        source = read_input(environ, "model")
        if not source:
            raise InvalidOptionError(
                "Input `model` is empty; give a Hub repo id (e.g. meta-llama/Llama-3.2-1B), "
                "or a recipe file in `config`."
            )
        options = dict(
            ignore=parse_ignore_text(read_input(environ, "ignore")),
            default_ignore=default_ignore,
            observer=read_input(environ, "observer") or None,
            target=read_input(environ, "target-repo") or None,
            private=private,
            revision=read_input(environ, "revision") or None,
            overwrite=overwrite,
            device=device,
            workers=workers,
            disk_budget=read_input(environ, "disk-budget") or None,
            part=part,
            tp=tp,
            rotate=rotate,
        )
        with _named_input():
            jobs = ptq_core.make_jobs(source, scheme, **options)
        several = len(jobs) > 1
        if several and (parts or (on_jobs and (finalize or part))):
            raise InvalidOptionError(
                f"Inputs `parts`, `part` and `finalize` take one scheme; `scheme` lists {len(jobs)}. Give one scheme, "
                "or drop them to quantize every scheme from one read (with `on-jobs`: in one job).")
        return Request(jobs, False, read_token(environ), parts, finalize, on_jobs, (source, scheme, options),
                       collection, several)
    return Request(jobs, bool(config), read_token(environ), parts, finalize, collection=collection)


def _recipe_jobs(environ: Mapping[str, str], config: str, *, split: bool, **step_options: object) -> tuple[Job, ...]:
    """The jobs of the recipe file ``config``, each with the step-wide ``step_options`` (``to_job``'s keywords).

    Refused before the file is read: a multi-part input (``split``), or an input the recipe replaces.
    """
    if split:
        raise InvalidOptionError("A recipe runs whole jobs; split one model with `model` and `part` instead.")
    given = [
        name for name in (*_RECIPE_INPUTS, "scheme")
        if read_input(environ, name).lower() not in ("", _INPUT_DEFAULTS.get(name, "").lower())
    ]
    if given:
        raise InvalidOptionError(
            f"Inputs {', '.join(given)} are given next to `config`; a recipe sets them per job. "
            "Move them into the recipe, or drop `config`."
        )
    with _named_input():
        return tuple(entry.to_job(**step_options) for entry in ptq_core.load_recipe(Path(config)))


def _count_input(environ: Mapping[str, str], name: str) -> int | None:
    """A count input (``parts``, ``finalize``) checked by the core's one rule, or None when empty."""
    text = read_input(environ, name)
    if not text:
        return None
    try:
        return parse_count(text, name=name)
    except InvalidOptionError as err:
        raise InvalidOptionError(f"Input `{name}`: {err}") from None


@contextmanager
def _named_input() -> Iterator[None]:
    """Name the step input a ``make_job`` error is about: ``Input `max-workers`: max_workers='x' must...``."""
    try:
        yield
    except PtqError as err:
        name = _OPTION_INPUTS.get(err.option or "")
        if name is None or isinstance(err, RecipeError):  # a recipe error already names its file and line
            raise
        named = type(err)(f"Input `{name}`: {err}")
        named.option = err.option
        raise named from None
