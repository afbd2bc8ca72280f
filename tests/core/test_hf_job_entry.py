"""hf_job_entry: what runs in a Hugging Face Job's container, reported as event lines only.

The whole job in a container is driven by tests/core/test_hf_jobs.py against the test Jobs API;
here the entry point itself: its usage, a refused spec as one ``error`` event, never a traceback.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from ptq_core.hf_job_entry import main, run_spec
from ptq_core.job_events import parse_event

ROOT = Path(__file__).resolve().parents[2]


def _events(text: str) -> list[dict]:
    return [e for e in map(parse_event, text.splitlines()) if e is not None]


def test_a_refused_spec_is_one_error_event_and_exit_1():
    out = io.StringIO()
    assert run_spec({"source": "./a/local/path", "scheme": "FP8_BLOCK"}, out) == 1  # hub_only: never a path
    (event,) = _events(out.getvalue())
    assert event["event"] == "error" and event["type"] == "InvalidOptionError" and "./a/local/path" in event["message"]


def test_an_unknown_scheme_is_reported_by_type():
    out = io.StringIO()
    assert run_spec({"source": "org/model", "scheme": "FP9", "options": {"private": True}}, out) == 1
    (event,) = _events(out.getvalue())
    assert event["type"] == "SchemeNotSupportedError" and "FP9" in event["message"]


def test_usage_without_exactly_one_spec(capsys):
    assert main([]) == 2 and main(["{}", "{}"]) == 2
    assert "usage: python -m ptq_core.hf_job_entry SPEC_JSON" in capsys.readouterr().err


def test_the_module_runs_as_the_container_runs_it():
    """In a subprocess: ``main`` configures logging and redaction for the whole process."""
    spec = json.dumps({"source": "not a repo id!", "scheme": "FP8_BLOCK"})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_TOKEN": "hf_secret_in_the_job_only_0123456789"}
    done = subprocess.run([sys.executable, "-m", "ptq_core.hf_job_entry", spec], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 1, done.stderr
    (event,) = _events(done.stdout)
    assert event["event"] == "error" and "Traceback" not in done.stderr
    assert env["HF_TOKEN"] not in done.stdout + done.stderr
