"""hubjob.request: a public call's arguments -> the Job (``job_from``), and the default target name."""

from __future__ import annotations

import pytest

from ptq_core.errors import InvalidOptionError
from ptq_core.hubjob.request import hub_job, job_from, target_name
from ptq_core.job import make_job


def test_a_source_and_options_make_the_job_and_max_workers_is_workers():
    job = job_from("org/Model", "fp8_block", {"max_workers": 3, "private": True})
    assert job.scheme_name == "FP8_BLOCK" and job.workers == 3 and job.private


def test_a_job_is_taken_as_it_is_and_nothing_may_be_given_next_to_it():
    job = make_job("org/Model", "W4A16")
    assert job_from(job, None, {"private": False, "workers": 1, "ignore": ()}) is job  # defaults are not choices
    with pytest.raises(InvalidOptionError, match="Options scheme, private were given next to a Job"):
        job_from(job, "FP8_BLOCK", {"private": True})


def test_converters_and_append_stay_local():
    with pytest.raises(InvalidOptionError, match="converters and append are for a local run"):
        hub_job(make_job("org/Model", "W4A16", append=True))


def test_the_default_target_name():
    assert target_name("meta-llama/Llama-3.2-1B", "FP8_BLOCK", "me") == "me/Llama-3.2-1B-FP8-BLOCK"
    with pytest.raises(InvalidOptionError, match="not a valid target repo id"):
        target_name("org/Model", "FP8_BLOCK", "bad namespace")
