"""What the step reports: the outputs (``$GITHUB_OUTPUT``) and the Markdown job summary.

Outside a runner (no ``GITHUB_OUTPUT`` / ``GITHUB_STEP_SUMMARY``) both are printed instead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ptq_core.job import Job

from ._workflow import Console, append_file, format_outputs

if TYPE_CHECKING:  # pragma: no cover
    from ptq_core.hubjob import HubResult


def output_values(results: Sequence[HubResult], *, as_lists: bool) -> dict[str, str]:
    """The step outputs: plain strings for one job, JSON lists for a recipe or several schemes (``as_lists``)."""
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


def summary_header(results: Sequence[HubResult], *, failed: bool) -> str:
    pushed = f"{len(results)} quantized repo{'s' if len(results) != 1 else ''} pushed"
    return f"## ptq-hub: {pushed}{', then a failure' if failed else ''}\n\n"


def write_outputs(console: Console, environ: Mapping[str, str], outputs: Mapping[str, str]) -> None:
    if outputs and not append_file("GITHUB_OUTPUT", format_outputs(outputs), environ):
        for name, value in outputs.items():
            console.line(f"output {name}: {value}")


def write_summary(console: Console, environ: Mapping[str, str], markdown: str) -> None:
    if not append_file("GITHUB_STEP_SUMMARY", markdown, environ):
        console.line(markdown)
