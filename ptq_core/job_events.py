"""The line protocol between a Hugging Face Job and the machine that follows it.

A job's only channel back is its log: one text line at a time, interleaved with
whatever else the container prints (pip, warnings, tracebacks). Each event is one
line, ``@@ptq `` followed by a JSON object, so the follower can tell events from
noise without guessing, and a human reading the raw log still sees what happened.

Events: ``progress`` (``stage``, ``done``, ``total``: the core's progress callback),
``result`` (the values the run returned, one scheme or several: ``hf_job_results``) and
``error`` (the error's class name and message).
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, TextIO

EVENT_PREFIX = "@@ptq "
"""Marks a log line that carries an event; nothing else in a log starts with it."""

PROGRESS_INTERVAL = 0.25
"""Seconds between two progress lines of one stage (the first and the last are always sent)."""


def format_event(kind: str, **fields: Any) -> str:
    """One event as one log line (no newline): ``@@ptq {"event": kind, ...}``."""
    return EVENT_PREFIX + json.dumps({"event": kind, **fields}, separators=(",", ":"), sort_keys=True)


def parse_event(line: str) -> dict[str, Any] | None:
    """The event a log line carries, or ``None`` for any other line (a malformed event included)."""
    text = line.strip()
    if not text.startswith(EVENT_PREFIX):
        return None
    try:
        event = json.loads(text[len(EVENT_PREFIX):])
    except ValueError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("event"), str) else None


class ProgressLines:
    """A progress callback that writes ``progress`` events, at most one per stage per interval.

    The first event of a stage and its last (``done >= total``) always go out: the follower
    opens and closes its bar on them. Writes are flushed at once, because a job's log is
    only as live as the container's stdout.
    """

    def __init__(self, out: TextIO, *, interval: float = PROGRESS_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._out = out
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = self._clock()
        last = self._last.get(stage)
        if last is not None and done < total and now - last < self._interval:
            return
        self._last[stage] = now
        self.emit("progress", stage=stage, done=int(done), total=int(total))

    def emit(self, kind: str, **fields: Any) -> None:
        """Write one event line and flush it."""
        self._out.write(format_event(kind, **fields) + "\n")
        self._out.flush()
