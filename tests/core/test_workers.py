"""ptq_core/workers.py: counts, and the ``"auto"`` worker rule (usable cores, cgroup quota, free VRAM)."""

from __future__ import annotations

import re
import sys
import types

import pytest

from ptq_core import workers
from ptq_core.errors import InvalidOptionError


@pytest.mark.parametrize(("value", "count"), [(1, 1), (7, 7), ("3", 3), (" 12 ", 12)])
def test_counts(value, count):
    assert workers.parse_count(value, name="parts") == count


@pytest.mark.parametrize("value", [0, -2, "0", "1.5", "x", "", None, True, 2.0, [2]])
def test_bad_counts_name_the_option_and_the_value(value):
    with pytest.raises(InvalidOptionError, match=re.escape(f"parts={value!r} must be a whole number >= 1")):
        workers.parse_count(value, name="parts")


@pytest.fixture
def cgroup(tmp_path, monkeypatch):
    """A fake /sys/fs/cgroup, and a process allowed on 16 cores."""
    monkeypatch.setattr(workers, "_CGROUP", tmp_path)
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    return tmp_path


def test_cpu_auto_is_the_affinity_without_a_quota(cgroup):
    assert workers.usable_cores() == 16
    (cgroup / "cpu.max").write_text("max 100000\n")
    assert workers.resolve_workers("auto", ("cpu",)) == 16


def test_a_cgroup_v2_quota_caps_the_cores(cgroup):
    (cgroup / "cpu.max").write_text("250000 100000\n")  # 2.5 CPUs: 3 threads
    assert workers.resolve_workers("auto", ("cpu",)) == 3
    (cgroup / "cpu.max").write_text("5000 100000\n")  # a twentieth of a CPU: still one worker
    assert workers.resolve_workers("Auto", ("cpu",)) == 1


def test_a_cgroup_v1_quota_caps_the_cores(cgroup):
    (cgroup / "cpu").mkdir()
    (cgroup / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (cgroup / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert workers.usable_cores() == 4
    (cgroup / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # unlimited
    assert workers.usable_cores() == 16


def test_cuda_auto_is_free_vram_per_worker_summed_and_capped_by_cores(cgroup, monkeypatch):
    free = {"cuda:0": 20 * 1024**3, "cuda:1": 3 * 1024**3}  # 5 workers' room, and less than one
    cuda = types.SimpleNamespace(mem_get_info=lambda device: (free[str(device)], 80 * 1024**3))
    fake_torch = types.SimpleNamespace(cuda=cuda, device=lambda name: name)
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    assert workers.auto_workers(("cuda:0",)) == 5
    assert workers.auto_workers(("cuda:0", "cuda:1")) == 6  # a GPU with little room still gets one
    (cgroup / "cpu.max").write_text("400000 100000\n")
    assert workers.auto_workers(("cuda:0", "cuda:1")) == 4  # each worker is a CPU thread too


def test_auto_without_a_device_uses_the_gpus_when_there_are_some(cgroup, monkeypatch):
    cuda = types.SimpleNamespace(is_available=lambda: False, device_count=lambda: 0)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    assert workers.auto_workers(None) == 16


def test_anything_else_is_refused_with_the_rule():
    with pytest.raises(InvalidOptionError, match=r"max_workers='many' must be a whole number >= 1, or 'auto'"):
        workers.resolve_workers("many")


def test_model_free_ptq_takes_auto(tmp_path, monkeypatch):
    """The drop-in's ``max_workers="auto"`` is resolved by the same rule, and the output is the same bytes."""
    from factory import make_checkpoint

    from ptq_core import model_free_ptq

    source = make_checkpoint(tmp_path / "src", "llama")
    monkeypatch.setattr(workers, "usable_cores", lambda: 3)
    auto = model_free_ptq(str(source), tmp_path / "auto", scheme="FP8_BLOCK", max_workers="auto", device="cpu")
    one = model_free_ptq(str(source), tmp_path / "one", scheme="FP8_BLOCK", max_workers=1, device="cpu")
    assert auto.size_after == one.size_after
    for shard in sorted(p.name for p in (tmp_path / "one").glob("*.safetensors")):
        assert (tmp_path / "auto" / shard).read_bytes() == (tmp_path / "one" / shard).read_bytes()
