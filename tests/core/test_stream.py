"""``stream``'s three parts, each alone: the disk gate, the uploader, and the dispatcher (over a local reader).

No Hub server: the uploader's ``upload`` is a function of the test, and the dispatcher
reads a local checkpoint through ``units.LocalReader``.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from factory import make_checkpoint

from ptq_core.job import make_job
from ptq_core.job_plan import plan_job
from ptq_core.parts import shard_sizes
from ptq_core.pipeline import quantize_job
from ptq_core.stream import DiskGate, Uploader, stream_reads, stream_shards
from ptq_core.units import FirstFailure, LocalReader


def _in_thread(fn) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


# --- the disk gate ----------------------------------------------------------------------------
def test_gate_admits_the_first_shard_whatever_its_size_and_tracks_the_peak():
    gate = DiskGate(budget=100, max_shards=3, failure=FirstFailure())
    assert gate.admit(500)  # nothing on disk: always admitted (the plan refused what can never fit)
    gate.hold(500)
    gate.release(500)
    assert gate.admit(60)
    gate.hold(60)
    assert gate.admit(40)
    gate.hold(40)
    assert (gate.bytes, gate.shards, gate.peak) == (100, 2, 500)


def test_gate_waits_for_room_until_a_release():
    gate = DiskGate(budget=100, max_shards=3, failure=FirstFailure())
    gate.admit(70)
    gate.hold(70)
    admitted = []
    waiter = _in_thread(lambda: admitted.append(gate.admit(50)))
    time.sleep(0.2)
    assert admitted == []  # 70 + 50 > 100: it waits
    gate.release(70)
    waiter.join(5)
    assert admitted == [True] and gate.peak == 70


def test_gate_waits_below_the_budget_when_max_shards_are_on_disk():
    gate = DiskGate(budget=1_000, max_shards=2, failure=FirstFailure())
    for _ in range(2):
        gate.admit(1)
        gate.hold(1)
    admitted = []
    waiter = _in_thread(lambda: admitted.append(gate.admit(1)))
    time.sleep(0.2)
    assert admitted == []
    gate.release(1)
    waiter.join(5)
    assert admitted == [True]


def test_a_failure_elsewhere_wakes_the_gate_with_a_refusal():
    failure = FirstFailure()
    gate = DiskGate(budget=10, max_shards=3, failure=failure)
    gate.admit(10)
    gate.hold(10)
    admitted = []
    waiter = _in_thread(lambda: admitted.append(gate.admit(10)))
    time.sleep(0.2)
    failure.set(RuntimeError("upload failed"))
    waiter.join(5)
    assert admitted == [False] and str(failure.error) == "upload failed"


# --- the uploader -----------------------------------------------------------------------------
def _shard_files(folder: Path, names: list[str], size: int = 10) -> None:
    for name in names:
        (folder / name).write_bytes(b"x" * size)


def test_uploader_uploads_in_order_deletes_each_and_releases_its_room(tmp_path):
    names = ["a", "b", "c"]
    _shard_files(tmp_path, names)
    failure = FirstFailure()
    gate = DiskGate(budget=1_000, max_shards=3, failure=failure)
    for _ in names:
        gate.hold(10)
    sent, events = [], []
    uploader = Uploader(names, tmp_path, lambda shard, path: sent.append((shard, path.read_bytes())), lambda: None,
                        gate=gate, failure=failure, progress=lambda *e: events.append(e), total=25)
    uploader.start(threads=1)
    for name in reversed(names):  # finished out of order: still uploaded in order
        uploader.ready(name, 10)
    uploader.join()
    assert [s for s, _ in sent] == names and all(data == b"x" * 10 for _, data in sent)
    assert list(tmp_path.iterdir()) == [] and (gate.bytes, gate.shards) == (0, 0)
    assert events[-1] == ("upload", 25, 25)  # the last shard completes the planned total
    assert failure.error is None


def test_uploader_ticks_while_it_waits_and_stops_at_the_first_failure(tmp_path):
    names = ["a", "b"]
    _shard_files(tmp_path, names)
    failure = FirstFailure()
    gate = DiskGate(budget=1_000, max_shards=3, failure=failure)
    ticks = []

    def upload(shard: str, path: Path) -> None:
        raise ConnectionError(f"{shard} lost")

    uploader = Uploader(names, tmp_path, upload, lambda: ticks.append(1), gate=gate, failure=failure,
                        progress=lambda *e: None, total=20)
    uploader.start(threads=2)
    time.sleep(1.5)  # the first shard is not ready: its thread ticks about once a second
    assert ticks
    uploader.ready("a", 10)
    uploader.join()  # both threads end: "b" is never taken after the failure
    assert str(failure.error) == "a lost" and (tmp_path / "b").exists()


# --- the dispatcher ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("llama") / "tiny", "llama", shards=3, num_hidden_layers=3)


@contextmanager
def _local_reader(checkpoint):
    with LocalReader(checkpoint) as reader:
        yield reader


@pytest.mark.parametrize("workers", [1, 3])
def test_stream_makes_the_same_shards_as_quantize_job_within_the_disk_budget(llama, tmp_path, workers):
    job = make_job(str(llama), "FP8_BLOCK", workers=workers)
    planned = plan_job(job, llama)
    sizes = shard_sizes(planned.plan)
    budget = max(sizes.values())  # one shard at a time
    work, sent = tmp_path / "work", tmp_path / "sent"
    work.mkdir()
    sent.mkdir()
    on_disk = []

    def upload(shard: str, path: Path) -> None:
        on_disk.append(sum(p.stat().st_size for p in work.iterdir()))
        (sent / shard).write_bytes(path.read_bytes())

    report = stream_shards(
        planned.plan, planned.checkpoint, planned.parts[0], lambda reads: _local_reader(planned.checkpoint), work,
        upload=upload, tick=lambda: None, disk_budget=budget, devices=[torch.device("cpu")], workers=workers,
        progress=lambda *e: None,
    )
    assert report.shards == planned.parts[0] and 0 < report.peak_disk <= budget
    assert list(work.iterdir()) == [] and max(on_disk) <= budget
    local = quantize_job(make_job(str(llama), "FP8_BLOCK"), tmp_path / "local").save_directory
    for shard in planned.plan.shards:
        assert (sent / shard).read_bytes() == (local / shard).read_bytes(), shard


def test_stream_raises_the_first_failure_of_any_stage(llama, tmp_path):
    planned = plan_job(make_job(str(llama), "FP8_BLOCK", workers=2), llama)

    def upload(shard: str, path: Path) -> None:
        raise ConnectionError("the Hub went away")

    with pytest.raises(ConnectionError, match="the Hub went away"):
        stream_shards(
            planned.plan, planned.checkpoint, planned.parts[0], lambda reads: _local_reader(planned.checkpoint),
            tmp_path, upload=upload, tick=lambda: None, disk_budget=10**9, devices=[torch.device("cpu")], workers=2,
            progress=lambda *e: None,
        )


def test_stream_reads_are_the_ranges_the_reader_is_opened_with(llama, tmp_path):
    """A Hub job starts reading ``stream_reads`` early and hands that reader on only if they are equal."""
    planned = plan_job(make_job(str(llama), "FP8_BLOCK", workers=2), llama)
    shards = list(planned.parts[0])
    seen_reads = []

    def open_reader(reads):
        seen_reads.append(reads)
        return _local_reader(planned.checkpoint)

    stream_shards(
        planned.plan, planned.checkpoint, shards, open_reader, tmp_path, upload=lambda shard, path: None,
        tick=lambda: None, disk_budget=10**9, devices=[torch.device("cpu")], workers=2, progress=lambda *e: None,
    )
    assert seen_reads == [stream_reads(planned.plan, planned.checkpoint, shards)]
    assert stream_reads(planned.plan, planned.checkpoint, shards[1:]) != seen_reads[0]
