"""``workers="auto"``: how many quantization threads this machine can feed, decided once.

The rule (stated in docs/ARCHITECTURE.md and the front ends' help):

* on CPU, one worker per **usable core**: the cores this process may run on
  (``os.sched_getaffinity``), capped by a cgroup CPU quota when there is one
  (cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``: a
  container or a CI runner limited to 2 CPUs gets 2 workers, not the host's 64);
* on CUDA, per device ``free VRAM // VRAM_PER_WORKER`` (at least 1), summed over the
  devices and capped by the usable cores (each worker is also a CPU thread that reads,
  splits and writes). ``VRAM_PER_WORKER`` is room for the largest work unit ptq-hub meets
  in practice (a 400B model's 53248 x 16384 bf16 projection is 1.7 GB; with its fp32
  temporaries and the quantized copy about 4 GB): the unit sizes are known only once the
  model is planned, and ``make_job`` reads no file.

A whole number is used as given; ``"auto"`` is resolved here, in the core, for every
front end (``make_job(workers="auto")``, ``model_free_ptq(max_workers="auto")``,
``ptq ... -j auto``, the Action's ``max-workers: auto``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from .errors import InvalidOptionError

__all__ = ["AUTO", "VRAM_PER_WORKER", "auto_workers", "parse_count", "resolve_workers", "usable_cores"]

AUTO = "auto"

VRAM_PER_WORKER = 4 * 1024**3
"""Bytes of free GPU memory one worker may need (see the module doc)."""

_CGROUP = Path("/sys/fs/cgroup")


def parse_count(value: object, *, name: str) -> int:
    """The one check of a count (workers, parts, tensor-parallel size): a whole number >= 1.

    Accepts an ``int`` or its decimal text (an Action input, a CLI argument); ``True`` is not one.

    Raises:
        InvalidOptionError: anything else.
    """
    count = int(value.strip()) if isinstance(value, str) and value.strip().isdigit() else value
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise InvalidOptionError(f"{name}={value!r} must be a whole number >= 1.")
    return count


def resolve_workers(value: object, devices: Sequence[str] | None = None, *, name: str = "max_workers") -> int:
    """``value`` as a worker count: a whole number as given, ``"auto"`` by :func:`auto_workers`.

    Raises:
        InvalidOptionError: neither ``"auto"`` (any case) nor a whole number >= 1.
    """
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return auto_workers(devices)
    try:
        return parse_count(value, name=name)
    except InvalidOptionError:
        raise InvalidOptionError(f"{name}={value!r} must be a whole number >= 1, or 'auto'.") from None


def auto_workers(devices: Sequence[str] | None = None) -> int:
    """The worker count of ``"auto"`` for ``devices`` (``None``: every GPU if any, else the CPU)."""
    cores = usable_cores()
    gpus = _cuda_devices(devices)
    if not gpus:
        return cores
    import torch  # only for a CUDA device: torch.cuda reports the free memory

    by_vram = sum(max(1, torch.cuda.mem_get_info(torch.device(d))[0] // VRAM_PER_WORKER) for d in gpus)
    return max(1, min(cores, by_vram))


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(cores, quota) if quota is not None else cores)


def _cgroup_cpu_quota() -> int | None:
    """CPUs the cgroup grants (quota / period, rounded up), or ``None`` when unlimited or unknown."""
    try:
        quota, _, period = (_CGROUP / "cpu.max").read_text().strip().partition(" ")
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = (_CGROUP / "cpu" / "cpu.cfs_quota_us").read_text().strip()
        period = (_CGROUP / "cpu" / "cpu.cfs_period_us").read_text().strip()
        return max(1, math.ceil(int(quota) / int(period))) if int(quota) > 0 else None
    except (OSError, ValueError):
        return None


def _cuda_devices(devices: Sequence[str] | None) -> list[str]:
    """The CUDA devices a job runs on: those named, or every GPU when none is named."""
    if devices is not None:
        return [d for d in devices if str(d).startswith("cuda")]
    import torch

    if not torch.cuda.is_available():
        return []
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
