"""The job's log protocol: one event per line, found among any other output, throttled per stage."""

from __future__ import annotations

import io

from ptq_core.job_events import EVENT_PREFIX, ProgressLines, format_event, parse_event


def test_an_event_round_trips_and_other_lines_are_not_events():
    line = format_event("progress", stage="download", done=3, total=10)
    assert line.startswith(EVENT_PREFIX) and "\n" not in line
    assert parse_event(line + "\n") == {"event": "progress", "stage": "download", "done": 3, "total": 10}
    for noise in ("Downloading torch (1.2 GiB)", "@@ptq not json", '@@ptq ["a list"]', '@@ptq {"no": "event"}', ""):
        assert parse_event(noise) is None, noise
    text = "line one\nand two | with a table"
    assert parse_event(format_event("result", markdown=text))["markdown"] == text  # newlines stay inside one line


def test_progress_lines_keep_the_first_and_last_event_of_a_stage_and_drop_the_rest_of_a_burst():
    now = [0.0]
    out = io.StringIO()
    lines = ProgressLines(out, interval=1.0, clock=lambda: now[0])
    for done in range(5):  # a burst within one interval
        lines("download", done, 4)
    lines("upload", 0, 2)  # another stage is not held back by the first one's interval
    now[0] = 1.5
    lines("download", 3, 4)  # the interval passed
    sent = [parse_event(line) for line in out.getvalue().splitlines()]
    assert [(e["stage"], e["done"]) for e in sent] == [("download", 0), ("download", 4), ("upload", 0), ("download", 3)]
