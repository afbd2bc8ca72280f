"""fanout: every scheme's work units joined by shared input ranges, read once, each scheme's own gate and uploads.

End to end on the loopback Hub (one download, one repo per scheme): tests/core/test_hubjob_many.py.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from factory import make_checkpoint

from ptq_core.fanout import FanOutTarget, fan_out_shards, joint_units
from ptq_core.job import make_jobs
from ptq_core.job_plan import plan_job
from ptq_core.parts import shard_sizes
from ptq_core.pipeline import quantize_job
from ptq_core.stream import StreamReport
from ptq_core.units import LocalReader

SCHEMES = ("FP8_BLOCK", "NVFP4A16", "W4A16")


@pytest.fixture(scope="module")
def moe(tmp_path_factory) -> Path:
    """Fused partners (q/k/v, gate/up per expert) in different input shards: NVFP4's groups read across shards."""
    return make_checkpoint(tmp_path_factory.mktemp("moe") / "tiny", "qwen3_moe", shards=3, split_fused=True)


def test_joint_units_read_each_range_once_and_cover_every_scheme(moe):
    jobs = make_jobs(str(moe), SCHEMES)
    first = plan_job(jobs[0], moe)
    planned = [first, *(plan_job(job, moe, checkpoint=first.checkpoint) for job in jobs[1:])]
    targets = [FanOutTarget(p.plan, p.plan.shards, Path("."), None, None, 0, None) for p in planned]
    units = joint_units(first.checkpoint, targets)
    keys = [(s, o) for u in units for s, o, _ in u.reads]
    assert len(keys) == len(set(keys))  # each range once
    for k, p in enumerate(planned):
        members = [m for u in units for m in u.members if m.target == k]
        assert sorted(w.name for m in members for w in m.unit) == sorted(w.name for w in p.plan.items)
    # NVFP4's fused groups read partners from the next shard: some joint units span output shards
    assert any(len({m.shard for m in u.members}) > 1 for u in units)


def test_fan_out_finishes_in_any_shard_order_with_no_room_to_spare(tmp_path):
    """Targets list their shards in any order (a part: biggest first) and the gate holds one shard:
    no deadlock, and every target's shards are byte-identical to ``quantize_job``'s."""
    checkpoint = make_checkpoint(tmp_path / "ck", "llama", shards=4, num_hidden_layers=4)
    jobs = make_jobs(str(checkpoint), "FP8_BLOCK,W4A16")  # no fused group crosses a shard: one shard at a time
    plans = [plan_job(jobs[0], checkpoint)]
    plans.append(plan_job(jobs[1], checkpoint, checkpoint=plans[0].checkpoint))
    uploaded: list[dict[str, bytes]] = [{}, {}]
    targets = []
    for k, planned in enumerate(plans):
        (tmp_path / f"t{k}").mkdir()
        targets.append(FanOutTarget(planned.plan, tuple(reversed(planned.plan.shards)), tmp_path / f"t{k}",
                                    lambda shard, path, k=k: uploaded[k].__setitem__(shard, path.read_bytes()),
                                    lambda: None, 1, lambda *_: None))
    done: list = []
    worker = threading.Thread(target=lambda: done.append(fan_out_shards(
        plans[0].checkpoint, targets, lambda reads: LocalReader(plans[0].checkpoint),
        devices=[torch.device("cpu")], workers=2)), daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert done, "fan_out_shards did not finish (deadlock)"
    assert all(isinstance(report, StreamReport) for report in done[0])
    for k, (job, report) in enumerate(zip(jobs, done[0])):
        assert report.peak_disk <= max(shard_sizes(plans[k].plan).values())  # one shard at a time, in input order
        local = tmp_path / f"local{k}"
        quantize_job(job, local)
        assert uploaded[k] == {p.name: p.read_bytes() for p in local.glob("*.safetensors")}
        assert not list((tmp_path / f"t{k}").iterdir())
