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
   recipe or ``scheme`` lists several) and a Markdown job summary to ``$GITHUB_STEP_SUMMARY``;
5. on failure writes the summary so far, one ``::error::`` annotation with the core's
   message, and exits 1.

Run outside a runner it prints the outputs and the summary instead of writing files.

The inputs are parsed in ``inputs.py`` (step 2), the outputs and summary written by
``summary.py`` (steps 4 and 5); this module runs the jobs and folds their log.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import ptq_core
from ptq_core.job import Job
from ptq_core.one_read import group_by_read
from ptq_core.redact import install_redaction, redact, secret_forms
from ptq_core.sizes import format_bytes
from ptq_core.stages import Stage
from ptq_core.errors import DiskSpaceError, PtqError, TargetRepoExistsError, TokenError

from ._workflow import Console
from .inputs import Request, parse_bool_input, read_input, read_request, read_token
from .summary import failure_markdown, output_values, result_markdown, summary_header, write_outputs, write_summary

if TYPE_CHECKING:  # pragma: no cover
    from ptq_core.hubjob import HubResult

# Re-exported: tests and callers import the step's input parsing from here (``action.main``).
__all__ = ["Request", "StageLog", "main", "output_values", "parse_bool_input", "read_input", "read_request", "run"]

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
                    console.line(_pushed_line(result))
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
    write_outputs(console, environ, output_values(results, as_lists=request.from_recipe or request.several))
    write_summary(console, environ, summary_header(results, failed=False) + "\n".join(sections))
    return 0


def _run_many(
    console: Console, environ: Mapping[str, str], request: Request, results: list[HubResult], sections: list[str]
) -> tuple[Job, str] | None:
    """Several schemes from one read (``quantize_many_to_hub``); the first failed job and what failed, or None."""
    label = _read_label(request.jobs)
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
                         else _pushed_line(result))
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
        label = _read_label(group)
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
        console.line(_pushed_line(result))
    return None


def _run_on_jobs(console: Console, request: Request):
    """``on-jobs``: ONE job on the token's Hugging Face Jobs (every scheme, one read), or parts and a finalize."""
    source, scheme, options = request.job_spec
    label = _read_label(request.jobs)
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
    write_outputs(console, environ, {"matrix": matrix, "revision": planned.revision or ""})
    write_summary(console, environ, planned.plan.to_markdown() + "\n" + planned.to_markdown())
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
        write_outputs(console, environ, output_values(results, as_lists=request.from_recipe or request.several))
    label = job.label if job is not None else "inputs"
    sections.append(failure_markdown(label, message))
    write_summary(console, environ, summary_header(results, failed=True) + "\n".join(sections))
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




def _pushed_line(result: HubResult) -> str:
    return f"Pushed {result.repo_url} (commit {result.commit_sha}), {result.ratio:.2f}x smaller."


def _read_label(jobs: Sequence[Job]) -> str:
    """The log label of jobs that share one read: ``org/Model -> FP8_BLOCK, W4A16``."""
    return f"{jobs[0].source} -> {', '.join(job.scheme_name for job in jobs)}"


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
