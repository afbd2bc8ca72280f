"""``units.UnitExecutor``, the one executor of work units, alone: every unit runs, the queue is bounded,
the first failure stops it."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from ptq_core.units import FirstFailure, UnitExecutor

CPU = [torch.device("cpu")]


def test_every_unit_runs_once_on_the_devices_in_turn():
    seen, lock = [], threading.Lock()

    def run(unit: int, device: torch.device) -> None:
        with lock:
            seen.append((unit, device))

    devices = [torch.device("cpu"), torch.device("meta")]
    with UnitExecutor(run, workers=1, devices=devices) as executor:
        for unit in range(6):
            assert executor.submit(unit)
    assert sorted(u for u, _ in seen) == list(range(6))
    assert [d.type for _, d in sorted(seen, key=lambda s: s[0])] == ["cpu", "meta"] * 3


def test_submit_blocks_at_two_units_per_worker():
    release = threading.Event()

    def run(unit: int, device: torch.device) -> None:
        release.wait(5)

    submitted = []
    with UnitExecutor(run, workers=2, devices=CPU) as executor:
        def dispatch() -> None:
            for unit in range(10):
                executor.submit(unit)
                submitted.append(unit)

        thread = threading.Thread(target=dispatch, daemon=True)
        thread.start()
        time.sleep(0.3)
        assert len(submitted) == 4  # 2 workers x 2 queued, the fifth waits
        release.set()
        thread.join(5)
    assert len(submitted) == 10


def test_the_first_failure_stops_the_queue_and_is_raised():
    ran = []

    def run(unit: int, device: torch.device) -> None:
        ran.append(unit)
        if unit == 1:
            raise ValueError("unit 1 is broken")

    with pytest.raises(ValueError, match="unit 1 is broken"):
        with UnitExecutor(run, workers=1, devices=CPU) as executor:
            for unit in range(50):
                if not executor.submit(unit):
                    break
    assert 1 in ran and len(ran) < 50


def test_a_failure_shared_with_another_stage_stops_it_and_is_raised():
    failure = FirstFailure()
    with pytest.raises(ConnectionError, match="upload"):
        with UnitExecutor(lambda unit, device: None, workers=1, devices=CPU, failure=failure) as executor:
            assert executor.submit(0)
            failure.set(ConnectionError("upload failed"))
            assert not executor.submit(1)


def test_an_error_of_the_dispatcher_wins_over_the_workers():
    with pytest.raises(KeyError):
        with UnitExecutor(lambda unit, device: None, workers=1, devices=CPU):
            raise KeyError("dispatcher")
