"""The Markdown the Space shows: the plan with its verdict, a refusal, a result, a model card.

Plain functions of their inputs (no Gradio, no Hub call), so the handlers in ``app.py`` and
``preview.py`` stay about events and the wording lives in one place.
"""

from __future__ import annotations

import re
from typing import Any

from ptq_core.errors import PtqError
from ptq_core.redact import redact
from ptq_core.sizes import format_bytes


def plan_markdown(model_id: str, planned: Any) -> tuple[str, bool]:
    """The plan table, the streamed job's disk and RAM against its budgets, and whether it can run.

    Jobs stream (tensors read over HTTP, each output shard uploaded then deleted), so a
    model larger than this Space's disk runs. Whether it fits is the core's verdict
    (``footprint.fits``): the job itself is refused by the same rule, in the same words.
    """
    plan, footprint = planned.plan, planned.footprint
    quantized = len(plan.quantized)
    head = f"**Source:** `{model_id}` · {quantized} tensor(s) to quantize · {len(plan.skipped)} not quantized"
    if not quantized:
        return (
            (
                f"{head}\n\n{planned.to_markdown()}\n**Nothing to quantize** with this scheme and ignore list: "
                "the new repo would be a copy. Shorten the ignore list or pick another model."
            ),
            False,
        )
    disk = (
        f"**Streamed:** at most {format_bytes(footprint.peak_disk)} of disk (budget {format_bytes(footprint.disk_budget)} "
        f"on this Space) and about {format_bytes(footprint.peak_ram)} of RAM at once, whatever the model's size "
        f"({format_bytes(plan.size_before)})."
    )
    if not footprint.fits:
        return (
            (
                f"{head}\n\n{planned.to_markdown()}\n**Too large for this Space, even streamed.** {disk} "
                f"{footprint.verdict} Run it on your own machine with `ptq run` or the GitHub Action."
            ),
            False,
        )
    return f"{head}\n\n{planned.to_markdown()}\n{disk} **Ready to run.**", True


def refusal(model_id: str, scheme: str, err: PtqError, token: str | None) -> str:
    shown = model_id if len(model_id) <= 100 else f"{model_id[:60]}… ({len(model_id)} characters)"
    return f"**Cannot quantize `{shown}` with {scheme}.** {redact(str(err), token)}"


def pick_a_model() -> str:
    return "*Type a model id (e.g. `org/Model`) and press Enter, or pick a suggestion, to see the plan.*"


def result_markdown(result: Any, *, card_below: bool = True) -> str:
    """One pushed repo; ``card_below``: the card shown under the results is this repo's (the first of several)."""
    note = " The model card is below." if card_below else ""
    return (
        f"### Done: [{result.repo_id}]({result.repo_url})\n\n"
        f"{result.ratio:.2f}x smaller.{note}\n\n{result.to_markdown()}"
    )


_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.DOTALL)


def card_markdown(card: str) -> str:
    """The card as the Hub renders it: YAML metadata as a block, then the body."""
    match = _FRONT_MATTER.match(card or "")
    if not match:
        return card or ""
    return f"```yaml\n{match.group(1)}\n```\n\n{card[match.end() :]}"


def error_title(err: PtqError) -> str:
    words = re.sub(r"(?<!^)(?=[A-Z])", " ", type(err).__name__.removesuffix("Error")).strip()
    return words.capitalize() if words else "Error"
