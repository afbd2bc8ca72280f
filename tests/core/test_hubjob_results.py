"""hubjob.results: what a Hub job reports (``HubResult``), the parts matrix, the stage clock."""

from __future__ import annotations

import time

from ptq_core.hubjob.results import HubResult, PartsPlan, StageClock


def test_the_result_table_names_the_repo_sizes_and_ratio():
    result = HubResult("me/M-FP8-BLOCK", "https://hub/me/M-FP8-BLOCK", "abc123", "FP8_BLOCK", 2_000_000, 1_000_000,
                       2.0, timings={"plan": 0.5, "total": 3.25})
    text = result.to_markdown()
    assert "[me/M-FP8-BLOCK](https://hub/me/M-FP8-BLOCK)" in text and "`FP8_BLOCK`" in text
    assert "2.00 MB" in text and "1.00 MB" in text and "2.00" in text


def test_the_parts_matrix_for_github_actions():
    parts = PartsPlan(plan=None, parts=(("a", "b"), ("c",)), costs={"a": 10, "b": 20, "c": 25}, revision="sha1")
    assert parts.matrix() == {"include": [{"part": "1/2", "shards": 2, "bytes": 30, "revision": "sha1"},
                                          {"part": "2/2", "shards": 1, "bytes": 25, "revision": "sha1"}]}
    assert "| 1/2 | 2 | 30 B |" in parts.to_markdown() and "--revision sha1" in parts.to_markdown()
    local = PartsPlan(plan=None, parts=(("a",),), costs={"a": 1})
    assert local.matrix() == {"include": [{"part": "1/1", "shards": 1, "bytes": 1}]}


def test_the_clock_forwards_every_event_and_times_the_overlapping_stages():
    seen = []
    clock = StageClock(lambda *event: seen.append(event))
    clock("download", 0, 10)
    clock("validate", 1, 1)
    time.sleep(0.02)
    clock("download", 10, 10)
    assert seen == [("download", 0, 10), ("validate", 1, 1), ("download", 10, 10)]
    timings = clock.timings(0.5)
    assert set(timings) == {"plan", "download", "total"} and timings["download"] >= 0.02
    assert timings["total"] >= 0.5 + timings["download"]
