"""hubjob.recovery: after a failure, what the job says and keeps (the races themselves: tests/test_stream.py,
tests/core/test_staging.py)."""

from __future__ import annotations

import logging

import pytest

from ptq_core.errors import TargetChangedError
from ptq_core.hubjob.recovery import refuse_changed, salvage
from ptq_core.publish import TargetState


def test_a_target_changed_meanwhile_names_the_new_files_and_nothing_is_overwritten():
    verified = TargetState(True, (".gitattributes",), head="a" * 40)
    now = TargetState(True, (".gitattributes", *(f"f{i}" for i in range(7))), head="b" * 40)
    with pytest.raises(TargetChangedError, match=r"Files were committed to me/M while this job ran: f0, f1, f2, f3, "
                                                 r"f4, \.\.\. \(main is now at commit bbbbbbbbbb\)\. Nothing was "
                                                 r"overwritten\. Pass overwrite=True"):
        refuse_changed(now, verified, "me/M")


def test_salvage_is_best_effort_and_never_hides_the_original_failure(caplog):
    class Stager:
        def commit(self):
            raise OSError("the Hub is down too")

    with caplog.at_level(logging.WARNING, logger="ptq_core.hubjob.recovery"):
        salvage(Stager())
    assert "Could not stage the shards uploaded before the failure: the Hub is down too" in caplog.text
