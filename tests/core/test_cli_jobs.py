"""cli_jobs: ``ptq run --on-jobs`` options and ``ptq jobs ACTION ID``, parsed without loading the core.

Launching, following and cancelling on the test Jobs API: tests/core/test_hf_jobs.py.
"""

from __future__ import annotations

import argparse

import pytest

from ptq_core.cli_jobs import add_jobs_command, add_on_jobs_options, run_on_jobs, uses_jobs
from ptq_core.errors import InvalidOptionError


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_on_jobs_options(parser)
    parser.add_argument("--finalize", type=int)
    return parser


@pytest.mark.parametrize("argv,flavor,jobs", [
    ([], None, False), (["--on-jobs"], "", True), (["--on-jobs", "cpu-xl"], "cpu-xl", True),
    (["--parts", "4"], None, True), (["--jobs-timeout", "6h"], None, True), (["--cancel"], None, True),
])
def test_any_jobs_option_hands_the_run_to_jobs(argv, flavor, jobs):
    args = _run_parser().parse_args(argv)
    assert args.on_jobs == flavor and uses_jobs(args) is jobs


def test_jobs_options_without_on_jobs_say_how_to_split_a_run_instead():
    args = _run_parser().parse_args(["--parts", "4"])
    with pytest.raises(InvalidOptionError, match="go with --on-jobs. To split a run over your own machines"):
        run_on_jobs(args, "org/m", "FP8_BLOCK", {}, lambda *a: None)


def test_the_jobs_command_takes_an_action_and_an_id():
    parser = argparse.ArgumentParser()
    add_jobs_command(parser.add_subparsers(dest="command"), progress=lambda: (lambda *a: None))
    args = parser.parse_args(["jobs", "logs", "-f", "alice/0123abc"])
    assert (args.jobs_command, args.job_id, args.follow) == ("logs", "alice/0123abc", True)
    assert parser.parse_args(["jobs", "cancel", "0123abc"]).jobs_command == "cancel"
    with pytest.raises(SystemExit):
        parser.parse_args(["jobs", "restart", "0123abc"])
