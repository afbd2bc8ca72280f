"""hf_job_results: a job's result event, written and read back, prints what the local run printed.

The end-to-end runs (a real job on the test Hub's Jobs API): tests/core/test_hf_jobs.py and
tests/core/test_hf_jobs_many.py.
"""

from __future__ import annotations

import pytest

from ptq_core.errors import HubNetworkError, JobFailedError, TargetRepoExistsError
from ptq_core.hf_job_results import HfJob, HfJobResult, read_result, result_event
from ptq_core.hubjob import HubResult, ManyResult
from ptq_core.job_events import format_event, parse_event

JOB = HfJob("0123abc", "alice", "https://hub/jobs/alice/0123abc", "cpu-basic", "bob/tiny -> FP8_BLOCK")


def _hub_result(scheme: str = "FP8_BLOCK", **extra) -> HubResult:
    return HubResult(repo_id=f"alice/tiny-{scheme}", repo_url=f"https://hub/alice/tiny-{scheme}", commit_sha="f" * 40,
                     scheme=scheme, size_before=4_000_000, size_after=2_100_000, ratio=1.9,
                     timings={"plan": 0.25, "download": 1.5, "total": 3.0}, card="# card", peak_disk=700_000, **extra)


def _through_the_log(fields: dict) -> dict:
    """What the follower parses: the event as one log line and back (JSON, tuples become lists)."""
    return parse_event(format_event("result", **fields))


def test_one_schemes_result_reads_back_as_the_same_table_with_its_job():
    local = _hub_result(part=(2, 3), branch="ptq-staging-abc")
    back = read_result(_through_the_log(result_event(local, collection="https://hub/collections/x")), JOB)
    assert isinstance(back, HfJobResult) and isinstance(back, HubResult)
    assert back.to_markdown() == local.to_markdown()  # every field the table reads travelled
    assert back.job == JOB and back.collection == "https://hub/collections/x"
    assert back.part == (2, 3) and back.card == "" and back.plan is None  # the card and plan stay in the job


def test_several_schemes_read_back_with_each_failure_as_its_own_error_class():
    local = ManyResult(
        results={"FP8_BLOCK": _hub_result("FP8_BLOCK"), "W4A16": _hub_result("W4A16")},
        errors={"NVFP4A16": HubNetworkError("upload failed; staged on branch ptq-staging-1"),
                "MXFP4A16": RuntimeError("a bug")},
        downloaded=3_900_000, collection="https://hub/collections/c")
    back = read_result(_through_the_log(result_event(local)), JOB)
    assert isinstance(back, ManyResult) and not back.ok
    assert back.to_markdown() == local.to_markdown()
    assert list(back.results) == ["FP8_BLOCK", "W4A16"] and all(r.job == JOB for r in back.results.values())
    assert type(back.errors["NVFP4A16"]) is HubNetworkError
    assert type(back.errors["MXFP4A16"]) is JobFailedError and str(back.errors["MXFP4A16"]) == "a bug"


@pytest.mark.parametrize("kind", [TargetRepoExistsError, HubNetworkError])
def test_a_typed_error_keeps_its_class_and_message(kind):
    many = ManyResult({}, {"W4A16": kind("the message")})
    back = read_result(_through_the_log(result_event(many)), JOB)
    assert type(back.errors["W4A16"]) is kind and str(back.errors["W4A16"]) == "the message"


def test_the_launched_line_is_one_sentence_for_every_front_end():
    assert JOB.launched_line() == ("Launched Hugging Face Job 0123abc (bob/tiny -> FP8_BLOCK, cpu-basic): "
                                   "https://hub/jobs/alice/0123abc")
