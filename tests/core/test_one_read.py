"""one_read: which jobs may share one read of a source (checked), and a recipe's jobs grouped for one read each."""

from __future__ import annotations

import pytest

from ptq_core.errors import InvalidOptionError
from ptq_core.job import make_job, make_jobs
from ptq_core.one_read import check_one_read, group_by_read


def test_check_one_read_takes_the_jobs_of_make_jobs():
    jobs = make_jobs("org/Model", "FP8_BLOCK,W4A16", revision="main")
    assert check_one_read(jobs) == jobs
    assert check_one_read([make_job("org/Model", "W4A16", target="me/a"), make_job("org/Model", "FP8_BLOCK",
                                                                                     target="me/b")])


@pytest.mark.parametrize(("jobs", "message"), [
    pytest.param([], "No job given", id="none"),
    pytest.param([make_job("org/A", "W4A16"), make_job("org/B", "FP8_BLOCK")], "must share source", id="sources"),
    pytest.param([make_job("org/A", "W4A16"), make_job("org/A", "FP8_BLOCK", revision="v2")], "must share source",
                 id="revisions"),
    pytest.param([make_job("org/A", "W4A16"), make_job("org/A", "w4a16", observer="memoryless_mse")],
                 "same scheme", id="scheme-twice"),
    pytest.param([make_job("org/A", "W4A16", target="me/x"), make_job("org/A", "FP8_BLOCK", target="me/x")],
                 "same target", id="target-twice"),
])
def test_check_one_read_refuses(jobs, message):
    with pytest.raises(InvalidOptionError, match=message):
        check_one_read(jobs)


def test_group_by_read_joins_jobs_that_differ_only_in_scheme_and_target():
    a = make_jobs("org/A", "FP8_BLOCK,NVFP4A16", private=True)
    b = make_job("org/B", "W4A16", private=True)
    a_public = make_job("org/A", "W4A16")  # another option: another read
    a_w4 = make_job("org/A", "W4A16", private=True, target="me/A-int4")
    a_fp8_again = make_job("org/A", "FP8_BLOCK", private=True, target="me/A-fp8-again")  # a scheme twice: next read
    groups = group_by_read([a[0], b, a_public, a[1], a_w4, a_fp8_again])
    assert groups == [(a[0], a[1], a_w4), (b,), (a_public,), (a_fp8_again,)]
    assert all(check_one_read(group) == group for group in groups)
    assert group_by_read([make_job("org/A", "W4A16", ignore=["x"]), make_job("org/A", "FP8_BLOCK")]) == [
        (make_job("org/A", "W4A16", ignore=["x"]),), (make_job("org/A", "FP8_BLOCK"),)]  # another ignore list
    assert group_by_read([]) == []
