"""What a Hugging Face Job reports back, both ways: the job's ``result`` event and the values it turns into.

The job (``hf_job_entry``) writes what its run returned as one ``result`` event
(``result_event``); the follower (``hf_jobs``) rebuilds the same values from it
(``read_result``): a ``HubResult`` (as an :class:`HfJobResult`, which adds the job) for one
scheme, a ``ManyResult`` of them for several. Every field that ``to_markdown`` reads travels,
so the follower prints exactly what a local run of the same request prints, by the same code.
Ordered values travel as lists of pairs: an event line's JSON sorts its keys, and the tables
keep the order of the stages and of the schemes.
The plan, the card and the footprint stay in the job (its log shows the plan).

A scheme that failed inside a several-scheme job comes back as its error, rebuilt as the
same ``PtqError`` class with the same message (``JobFailedError`` for any other exception).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from . import errors
from .errors import JobFailedError, PtqError
from .hubjob.many import ManyResult
from .hubjob.results import HubResult

__all__ = ["HfJob", "HfJobResult", "read_result", "result_event"]

_LOCAL_ONLY = ("plan", "card", "footprint")
"""``HubResult`` fields that stay in the job: objects of its own process, not printed in a result table."""


@dataclass(frozen=True)
class HfJob:
    """A launched Hugging Face Job: its id, namespace and page."""

    id: str
    namespace: str
    url: str
    flavor: str
    label: str

    def launched_line(self) -> str:
        """The line every front end prints when the job exists (CLI, Action, logs)."""
        return f"Launched Hugging Face Job {self.id} ({self.label}, {self.flavor}): {self.url}"


@dataclass(frozen=True)
class HfJobResult(HubResult):
    """A ``HubResult`` that a Hugging Face Job made: the job's own values, and the job.

    ``to_markdown()`` is ``HubResult``'s: the table a local run prints. ``collection``: the
    URL of the collection the job added the repo to, when one was asked.
    """

    job: HfJob = field(kw_only=True)
    collection: str | None = field(default=None, kw_only=True)


def _hub_fields(result: HubResult) -> dict[str, Any]:
    values = {f.name: getattr(result, f.name) for f in fields(HubResult) if f.name not in _LOCAL_ONLY}
    values["timings"] = list(values["timings"].items())  # pairs: event lines sort their keys, the table keeps order
    return values


def result_event(result: HubResult | ManyResult, *, collection: str | None = None) -> dict[str, Any]:
    """The ``result`` event's fields (JSON-ready) for what the job's run returned."""
    if isinstance(result, ManyResult):
        return {"results": [[name, _hub_fields(one)] for name, one in result.results.items()],
                "errors": [[name, type(err).__name__, str(err)] for name, err in result.errors.items()],
                "downloaded": result.downloaded, "collection": result.collection}
    return {**_hub_fields(result), "collection": collection}


def _hub_result(values: dict[str, Any], job: HfJob, collection: str | None = None) -> HfJobResult:
    names = {f.name for f in fields(HubResult)} - set(_LOCAL_ONLY)
    known = {k: v for k, v in values.items() if k in names}
    part = known.get("part")
    known["part"] = tuple(part) if part else None
    known["timings"] = {stage: seconds for stage, seconds in known.get("timings", ())}
    return HfJobResult(**known, job=job, collection=collection)


def _error(kind: str, message: str) -> BaseException:
    """The job's error as the class it was, with its message (so ``str`` prints what the job printed)."""
    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, PtqError):
        return cls(message)
    return JobFailedError(message)


def read_result(event: dict[str, Any], job: HfJob) -> HfJobResult | ManyResult:
    """What the job's ``result`` event says, as the values a local run returns."""
    if "results" not in event:
        return _hub_result(event, job, event.get("collection"))
    return ManyResult(
        results={name: _hub_result(values, job) for name, values in event["results"]},
        errors={name: _error(kind, message) for name, kind, message in event.get("errors", ())},
        downloaded=int(event.get("downloaded", 0)),
        collection=event.get("collection"),
    )
