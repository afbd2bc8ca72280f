"""Entry point of the composite action: ``python -m action.main``.

``action.yml`` hands every input over as an environment variable (``model`` ->
``INPUT_MODEL``, ``hf-token`` -> ``INPUT_HF_TOKEN``...), never pasted into shell text.
This module:

1. masks the token (``::add-mask::``) before it prints anything else;
2. parses and checks every input (booleans are exactly ``true``/``false``, a recipe is
   loaded and validated whole); ``quantize_to_hub`` checks the scheme, the ignore list
   and the repo ids before its first request, so bad input fails before any network call;
3. calls ``ptq_core.quantize_to_hub`` once per job (several schemes: one read, or with
   ``on-jobs`` one Hugging Face Job; a recipe's jobs that differ only in scheme and target:
   one read), folding the log into ``::group::`` sections;
4. writes the outputs to ``$GITHUB_OUTPUT`` (JSON lists when the jobs come from a
   recipe) and a Markdown job summary to ``$GITHUB_STEP_SUMMARY``;
5. on failure writes the summary so far, one ``::error::`` annotation with the core's
   message, and exits 1.

Run outside a runner it prints the outputs and the summary instead of writing files.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import ptq_core
from ptq_core.constants import DEFAULT_SCHEME, parse_bool
from ptq_core.ignore_text import parse_ignore_text
from ptq_core._http import resolve_token
from ptq_core.job import Job
from ptq_core.one_read import group_by_read
from ptq_core.redact import install_redaction, redact, secret_forms
from ptq_core.sizes import format_bytes
from ptq_core.stages import Stage
from ptq_core.errors import DiskSpaceError, InvalidOptionError, PtqError, RecipeError, TargetRepoExistsError, TokenError
from ptq_core.workers import parse_count

from ._workflow import Console, append_file, format_outputs

if TYPE_CHECKING:  # pragma: no cover
    from ptq_core.hubjob import HubResult

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

# The progress callback's stages, folded into four log groups. Groups only move forward:
# a late callback for an earlier stage logs its line in the group that is open.
_STAGE_GROUPS: dict[Stage, str] = {
    Stage.DOWNLOAD: "Download",
    Stage.VALIDATE: "Plan",
    Stage.QUANTIZE: "Quantize",
    Stage.WRITE: "Quantize",
    Stage.CARD: "Push",
    Stage.UPLOAD: "Push",
    Stage.STAGE: "Push",
    Stage.COMMIT: "Push",
}
_GROUP_ORDER = ("Download", "Plan", "Quantize", "Push")


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
        if parts or finalize or part:
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
            jobs = tuple(
                entry.to_job(overwrite=overwrite, device=device, workers=workers, tp=tp)
                for entry in ptq_core.load_recipe(Path(config))
            )
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


# --- progress and log --------------------------------------------------------
class StageLog:
    """The progress callback: a log group per stage group, about ten lines per stage."""

    def __init__(self, console: Console, label: str) -> None:
        self._console = console
        self._label = label
        self._rank = -1
        self._shown: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        known = Stage.parse(stage)
        title = _STAGE_GROUPS.get(known) if known is not None else None
        rank = _GROUP_ORDER.index(title) if title else self._rank
        if rank > self._rank:
            self._rank = rank
            self._console.group(f"{title}: {self._label}")
        tenth = min(10, 10 * done // total) if total > 0 else 0
        if tenth <= self._shown.get(stage, -1):
            return
        self._shown[stage] = tenth
        unit = " bytes" if known is not None and known.counts_bytes else ""
        self._console.line(f"{stage}: {done:,} of {total:,}{unit}" if total > 0 else f"{stage}: {done:,}{unit}")


class _LogHandler(logging.Handler):
    """Library log records into the step's log: secrets redacted, command lookalikes neutralized."""

    def __init__(self, console: Console, token: str | None) -> None:
        super().__init__()
        self._console = console
        self._token = token
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.levelno >= logging.WARNING:
                text = f"{record.levelname.lower()}: {text}"
            self._console.line(redact(text, self._token))
        except Exception:  # pragma: no cover - logging must never break the run
            self.handleError(record)


# --- reporting ---------------------------------------------------------------
def output_values(results: Sequence[HubResult], *, as_lists: bool) -> dict[str, str]:
    """The step outputs: plain strings for one job, JSON lists for a recipe."""
    columns: dict[str, list[str | int | float]] = {
        "repo-id": [r.repo_id for r in results],
        "repo-url": [r.repo_url for r in results],
        "commit-sha": [r.commit_sha for r in results],
        "size-before": [int(r.size_before) for r in results],
        "size-after": [int(r.size_after) for r in results],
        "compression-ratio": [round(float(r.ratio), 2) for r in results],
    }
    if as_lists:
        return {name: json.dumps(values) for name, values in columns.items()}
    if not results:
        return {}
    return {
        name: f"{values[0]:.2f}" if name == "compression-ratio" else str(values[0])
        for name, values in columns.items()
    }


def _code(text: str) -> str:
    return "`" + text.replace("`", "'") + "`"


def result_markdown(job: Job, result: HubResult) -> str:
    """The summary section of one pushed repo: link, sizes, ratio, time per stage, then the plan."""
    heading = f"### {_code(job.source)} -> {_code(job.scheme_name)}"
    if getattr(result, "plan", None) is None:  # an HfJobResult: the plan stayed in the job's log
        return f"{heading}\n\n{result.to_markdown()}\nRan as Hugging Face Job [{result.job.id}]({result.job.url}).\n"
    return f"{heading}\n\n{result.to_markdown()}\n{result.plan.to_markdown()}\n"


def failure_markdown(label: str, message: str) -> str:
    fence = "````" if "```" in message else "```"
    return f"### Failed: {_code(label)}\n\n{fence}text\n{message}\n{fence}\n"


# --- the step ----------------------------------------------------------------
def run(environ: Mapping[str, str], stdout: TextIO) -> int:
    """Run the step against ``environ``; return the exit status (0 or 1)."""
    console = Console(stdout)
    # Mask first: nothing the step prints may come before the runner knows the secrets.
    token = read_token(environ)
    for secret in secret_forms(token):
        console.add_mask(secret)
    handler = _LogHandler(console, token)
    _install_log_handler(handler)
    install_redaction(lambda: token)  # third-party records too, not only the ones this handler shows

    results: list[HubResult] = []
    sections: list[str] = []
    request: Request | None = None
    job: Job | None = None
    index = 0
    try:
        request = read_request(environ)
        if request.parts is not None and request.on_jobs is None:  # the plan step of a matrix workflow: no quantization
            return _plan_parts(console, environ, request)
        if request.several and request.finalize is None:
            failed = _run_many(console, environ, request, results, sections)
            if failed is not None:
                job, message = failed
                return _fail(console, environ, request, job, request.jobs.index(job) + 1, results, sections,
                             redact(message, token))
        elif request.from_recipe:
            recipe_failed = _run_recipe(console, environ, request, results, sections)
            if recipe_failed is not None:
                job, index, message = recipe_failed
                return _fail(console, environ, request, job, index, results, sections, redact(message, token))
        else:
            for index, job in enumerate(request.jobs, start=1):
                if len(request.jobs) > 1:
                    console.line(f"Job {index} of {len(request.jobs)}: {job.label}")
                try:
                    if request.on_jobs is not None:
                        result = _run_on_jobs(console, request)
                    elif request.finalize is not None:
                        result = ptq_core.finalize_hub_job(
                            job, parts=request.finalize, token=request.token, progress=StageLog(console, job.label),
                            work_dir=_work_dir(environ),
                        )
                    else:
                        result = ptq_core.quantize_to_hub(
                            job, token=request.token, progress=StageLog(console, job.label), work_dir=_work_dir(environ)
                        )
                finally:
                    console.end_group()
                results.append(result)
                sections.append(result_markdown(job, result))
                if job.part is not None:
                    console.line(f"Staged part {job.part[0]}/{job.part[1]} on {result.repo_id} (staging head {result.commit_sha}).")
                else:
                    console.line(f"Pushed {result.repo_url} (commit {result.commit_sha}), {result.ratio:.2f}x smaller.")
    except PtqError as err:
        message = redact(str(err), token)
        hint = _action_hint(err, request)
        if hint:
            message += "\n" + hint
        return _fail(console, environ, request, job, index, results, sections, message)
    except Exception as err:  # a bug, not a user error: keep the traceback in the log
        console.end_group()
        console.line(redact(traceback.format_exc(), token))
        message = redact(f"Unexpected {type(err).__name__}: {err}. This is a bug in ptq-hub; please report it.", token)
        return _fail(console, environ, request, job, index, results, sections, message)
    finally:
        logging.getLogger().removeHandler(handler)

    if request.collection and results and request.jobs[0].part is None and not (request.several or request.on_jobs):
        url = ptq_core.add_to_collection(request.collection, [r.repo_id for r in results], token=request.token)
        console.line(f"Added to the collection {url}")
    _write_outputs(console, environ, output_values(results, as_lists=request.from_recipe or request.several))
    _write_summary(console, environ, _summary_header(results, failed=False) + "\n".join(sections))
    return 0


def _run_many(
    console: Console, environ: Mapping[str, str], request: Request, results: list[HubResult], sections: list[str]
) -> tuple[Job, str] | None:
    """Several schemes from one read (``quantize_many_to_hub``); the first failed job and what failed, or None."""
    label = f"{request.jobs[0].source} -> {', '.join(j.scheme_name for j in request.jobs)}"
    try:
        many = _run_on_jobs(console, request) if request.on_jobs is not None else ptq_core.quantize_many_to_hub(
            request.jobs, token=request.token, progress=StageLog(console, label), work_dir=_work_dir(environ),
            collection=request.collection)
    finally:
        console.end_group()
    for job in request.jobs:
        result = many.results.get(job.scheme_name)
        if result is not None:
            results.append(result)
            sections.append(result_markdown(job, result))
            console.line(f"Staged part {job.part[0]}/{job.part[1]} on {result.repo_id}." if job.part is not None
                         else f"Pushed {result.repo_url} (commit {result.commit_sha}), {result.ratio:.2f}x smaller.")
    console.line(f"Source downloaded once for {len(request.jobs)} schemes: {format_bytes(many.downloaded)}.")
    if many.collection:
        console.line(f"Added to the collection {many.collection}")
    if many.ok:
        return None
    failed = [job for job in request.jobs if job.scheme_name in many.errors]
    return failed[0], "\n".join(f"{job.scheme_name}: {many.errors[job.scheme_name]}" for job in failed)


@dataclass(frozen=True)
class _OneRead:
    """The jobs of one read, named in a failure that the read's preparation raised for the group as a whole."""

    label: str


def _run_recipe(
    console: Console, environ: Mapping[str, str], request: Request, results: list[HubResult], sections: list[str]
) -> tuple[Job | _OneRead, int, str] | None:
    """A recipe's jobs, one read of the source per group (``one_read.group_by_read``: jobs that differ only in
    scheme and target), groups in the order of their first job; a group of one runs as a single job.

    Returns the first failure: what failed (a job, or the group when its preparation refused it
    before any repo was made), its job number and the message; ``None`` when every job finished.
    """
    count = len(request.jobs)
    for group in group_by_read(request.jobs):
        index = request.jobs.index(group[0]) + 1
        label = f"{group[0].source} -> {', '.join(job.scheme_name for job in group)}"
        try:
            if len(group) > 1:
                numbers = ", ".join(str(request.jobs.index(job) + 1) for job in group)
                console.line(f"Jobs {numbers} of {count} from one read: {label}")
                failed = _run_many(console, environ, replace(request, jobs=group, collection=None), results, sections)
                if failed is not None:
                    return failed[0], request.jobs.index(failed[0]) + 1, failed[1]
                continue
            (job,) = group
            if count > 1:
                console.line(f"Job {index} of {count}: {job.label}")
            try:
                result = ptq_core.quantize_to_hub(job, token=request.token, progress=StageLog(console, job.label),
                                                  work_dir=_work_dir(environ))
            finally:
                console.end_group()
        except PtqError as err:
            hint = _action_hint(err, request)
            return group[0] if len(group) == 1 else _OneRead(label), index, str(err) + (f"\n{hint}" if hint else "")
        results.append(result)
        sections.append(result_markdown(job, result))
        console.line(f"Pushed {result.repo_url} (commit {result.commit_sha}), {result.ratio:.2f}x smaller.")
    return None


def _run_on_jobs(console: Console, request: Request):
    """``on-jobs``: ONE job on the token's Hugging Face Jobs (every scheme, one read), or parts and a finalize."""
    source, scheme, options = request.job_spec
    label = f"{source} -> {', '.join(job.scheme_name for job in request.jobs)}"
    result = ptq_core.run_on_hf_jobs(
        source, scheme, parts=request.parts, finalize=request.finalize, flavor=request.on_jobs, token=request.token,
        collection=request.collection, progress=StageLog(console, label),
        on_launch=lambda job: console.line(job.launched_line()), **options)
    if not request.several and result.collection:  # in the job, with the token
        console.line(f"Added to the collection {result.collection}")
    return result


def _plan_parts(console: Console, environ: Mapping[str, str], request: Request) -> int:
    """``parts: K``: split the job into K parts and write them as a matrix for the next jobs."""
    (job,) = request.jobs
    planned = ptq_core.plan_hub_parts(job, request.parts, token=request.token)
    matrix = json.dumps(planned.matrix())
    console.line(f"Planned {request.parts} part(s) of {job.label}: {matrix}")
    _write_outputs(console, environ, {"matrix": matrix, "revision": planned.revision or ""})
    _write_summary(console, environ, planned.plan.to_markdown() + "\n" + planned.to_markdown())
    return 0


def _fail(
    console: Console,
    environ: Mapping[str, str],
    request: Request | None,
    job: Job | None,
    index: int,
    results: Sequence[HubResult],
    sections: list[str],
    message: str,
) -> int:
    if request is not None and job is not None and len(request.jobs) > 1:
        message = f"Job {index} of {len(request.jobs)} ({job.label}): {message}"
    if results and request is not None:  # what did get pushed stays visible to later steps
        _write_outputs(console, environ, output_values(results, as_lists=request.from_recipe or request.several))
    label = job.label if job is not None else "inputs"
    sections.append(failure_markdown(label, message))
    _write_summary(console, environ, _summary_header(results, failed=True) + "\n".join(sections))
    console.error(message)
    return 1


def _action_hint(err: PtqError, request: Request | None) -> str | None:
    """The step input that fixes ``err``: the core's messages name its keyword arguments."""
    if isinstance(err, TargetRepoExistsError):
        return "In the action: set `overwrite: true` to replace its files, or pick another `target-repo`."
    if isinstance(err, TokenError) and (request is None or request.token is None):
        return "In the action: set `hf-token: ${{ secrets.HF_TOKEN }}` with a token that has write access."
    if isinstance(err, DiskSpaceError):
        return "In the action: set PTQ_HUB_CACHE in the job's `env:` to a folder on a larger disk."
    return None


def _summary_header(results: Sequence[HubResult], *, failed: bool) -> str:
    pushed = f"{len(results)} quantized repo{'s' if len(results) != 1 else ''} pushed"
    return f"## ptq-hub: {pushed}{', then a failure' if failed else ''}\n\n"


def _write_outputs(console: Console, environ: Mapping[str, str], outputs: Mapping[str, str]) -> None:
    if outputs and not append_file("GITHUB_OUTPUT", format_outputs(outputs), environ):
        for name, value in outputs.items():
            console.line(f"output {name}: {value}")


def _write_summary(console: Console, environ: Mapping[str, str], markdown: str) -> None:
    if not append_file("GITHUB_STEP_SUMMARY", markdown, environ):
        console.line(markdown)


def _work_dir(environ: Mapping[str, str]) -> Path | None:
    """Where the core puts each job's download and output (it removes them after the job).

    ``PTQ_HUB_CACHE`` set on the job wins (a large disk on a self-hosted runner); otherwise
    ``RUNNER_TEMP``, which the runner empties after each job even when the step was killed.
    """
    temp = environ.get("RUNNER_TEMP")
    if "PTQ_HUB_CACHE" in environ or not temp:
        return None
    return Path(temp) / "ptq-hub"


def _install_log_handler(handler: logging.Handler) -> None:
    # ptq_core logs INFO per step; other libraries' records reach the handler from WARNING up.
    logging.getLogger().addHandler(handler)
    logging.getLogger("ptq_core").setLevel(logging.INFO)


def main() -> None:
    sys.exit(run(os.environ, sys.stdout))


if __name__ == "__main__":
    main()
