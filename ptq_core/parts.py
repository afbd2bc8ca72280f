"""How a streamed Hub job is cut and what it holds at once: parts, budgets, footprint, fingerprint.

A streamed job works output shard by output shard. The plan already says which
output shard each item and each fused group goes to (a fused group always sits
in one output shard), so output shards are the unit of everything here:

* **parts** for many machines: output shards dealt to ``k`` parts, balanced by
  bytes moved (read + written), so a fused group is never split across parts;
* **budgets**: the local disk the job may fill (finished shards waiting for
  upload) and the memory it may use, by default derived from what is free;
* **footprint**: the peak disk and RAM the streamed job will use, shown by the
  plan before anything runs, and the one verdict on whether it fits the budgets
  (``Footprint.fits``: what the Space shows is what the core enforces);
* **fingerprint**: a short hash of everything that decides the output bytes
  (source, pinned commit, scheme and config, ignore list, observer, tool version),
  which names the staging branch and is checked before parts are combined.

No network; planning only.
"""

from __future__ import annotations

import hashlib
import math
import json
import os
import shutil
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DiskSpaceError, InvalidOptionError, MemoryBudgetError, PtqError
from .experts import is_contiguous
from .job import MAX_PARTS, Job
from .plan import Plan, PlannedWeight
from .sizes import format_bytes
from .sources.safetensors_header import DTYPE_SIZES

__all__ = [
    "LOCAL_SHARDS",
    "Budgets",
    "Footprint",
    "default_disk_budget",
    "default_ram_budget",
    "estimate_footprint",
    "fingerprint",
    "job_identity",
    "resolve_budgets",
    "shard_costs",
    "shard_sizes",
    "split_parts",
]

LOCAL_SHARDS = 3
"""Output shards on local disk at once, at most: being written, waiting, uploading (the budget may allow fewer)."""
_DISK_MARGIN = 1 << 30
"""Default disk budget: 90% of the free space, minus this (or 10% of it on small disks)."""
_RAM_SHARE = 0.8
"""Default RAM budget: this share of the available memory (cgroup limit included)."""
_SCRATCH_BYTES = 96 << 20
"""Per-worker quantize buffers besides the input (``numerics`` works in ~4M-element row chunks)."""
_WINDOW_MIN, _WINDOW_MAX = 64 << 20, 512 << 20
_HEADER_BYTES_PER_TENSOR = 160  # a safetensors header entry, generously


def default_disk_budget(folder: Path) -> int:
    """90% of ``folder``'s free space minus a margin of min(1 GiB, 10%): room left for logs and caches."""
    free = shutil.disk_usage(folder).free
    return max(0, int(free * 0.9) - min(_DISK_MARGIN, free // 10))


def default_ram_budget() -> int:
    """80% of the memory available now (``MemAvailable``, capped by a cgroup limit when there is one)."""
    available = _meminfo_available()
    limit = _cgroup_room()
    if limit is not None:
        available = min(available, limit)
    return int(available * _RAM_SHARE)


def _meminfo_available() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _cgroup_room() -> int | None:
    """cgroup v2 ``memory.max - memory.current``: a container's (a Space's) real limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)


@dataclass(frozen=True)
class Budgets:
    """What a streamed job may use: local disk, memory, read-ahead and worker threads."""

    disk: int
    ram: int
    window: int  # bytes fetched ahead of the workers
    workers: int  # worker threads that fit the RAM budget (at most the job's)
    disk_from: str = "disk_budget"  # where ``disk`` comes from, for a refusal's message


@dataclass(frozen=True)
class Footprint:
    """The most a streamed job of a plan holds at once, and the one verdict on whether it fits its budgets.

    ``peak_disk``: output shards written and not yet confirmed on the Hub, never above
    ``disk_budget`` unless one shard alone is larger. ``peak_ram``: read-ahead buffers
    plus the tensors the workers hold, an upper estimate that leaves out the interpreter.
    What decides: the largest output shard against the disk budget (a shard is written
    whole before it is uploaded), and the memory the largest work unit needs against the
    RAM budget (fewer workers make room for the rest). ``prepare_hub_job`` raises
    :meth:`refusal`; the Space shows :attr:`verdict`; both read :attr:`fits`.
    """

    peak_disk: int
    peak_ram: int
    disk_budget: int
    ram_budget: int
    largest_shard: str = ""
    largest_shard_bytes: int = 0
    largest_unit: str = ""  # "tensor x", "fused group (...)", "expert 3 of x"
    largest_unit_bytes: int = 0
    unit_ram: int = 0  # memory one worker needs for the largest unit
    disk_from: str = "disk_budget"

    @property
    def fits(self) -> bool:
        """Whether the streamed job runs within both budgets."""
        return self.refusal() is None

    @property
    def verdict(self) -> str:
        """One sentence: fits, or why not and what to do (the message of the error the core raises)."""
        refusal = self.refusal()
        if refusal is not None:
            return str(refusal)
        return (f"Fits: at most {format_bytes(self.peak_disk)} of disk (budget {format_bytes(self.disk_budget)}) and "
                f"about {format_bytes(self.peak_ram)} of RAM (budget {format_bytes(self.ram_budget)}) at once.")

    def refusal(self) -> PtqError | None:
        """The error a job of this footprint is refused with, or ``None`` when it fits."""
        if self.largest_shard_bytes > self.disk_budget:
            return DiskSpaceError(
                f"Output shard {self.largest_shard} needs {format_bytes(self.largest_shard_bytes)} on local disk "
                f"before it is uploaded, more than the disk budget of {format_bytes(self.disk_budget)} "
                f"({self.disk_from}). Free some space, pass work_dir= on a larger disk, or raise disk_budget "
                "(--disk-budget)."
            )
        if self.unit_ram > self.ram_budget:
            return MemoryBudgetError(
                f"The {self.largest_unit} is {format_bytes(self.largest_unit_bytes)}; quantizing it needs about "
                f"{format_bytes(self.unit_ram)} of memory, more than the {format_bytes(self.ram_budget)} this job may "
                "use (80% of the available memory). Run it on a machine with more memory, or add the module to ignore "
                "to copy it as is."
            )
        return None

    def check(self) -> None:
        """Raise :meth:`refusal`, if any.

        Raises:
            DiskSpaceError: one output shard is larger than the disk budget.
            MemoryBudgetError: one work unit (a tensor, or a fused group) needs more memory than the RAM budget.
        """
        refusal = self.refusal()
        if refusal is not None:
            raise refusal

    def as_dict(self) -> dict[str, int]:
        """Peaks and budgets, JSON-ready (a plan's summary)."""
        return {"peak_disk": self.peak_disk, "peak_ram": self.peak_ram, "disk_budget": self.disk_budget,
                "ram_budget": self.ram_budget}


_last_units: tuple[weakref.ref[Plan], dict[int | str | tuple[str, int], int]] | None = None


def _unit_bytes(plan: Plan) -> dict[int | str | tuple[str, int], int]:
    """Input bytes of each work unit: a fused group counts whole (one worker holds it all), and so
    do the parts of an expert cut from its slice (the slice, and each part copied out of it).

    An item's input is its own bytes: an expert part read through its slice reads ``parts``
    times its own bytes once for all ``parts`` parts. The last plan's answer is kept (the
    budgets and then the footprint of one plan read it; never modify it).
    """
    global _last_units
    last = _last_units
    if last is not None and last[0]() is plan:
        return last[1]
    sizes: dict[int | str | tuple[str, int], int] = {}
    get = sizes.get
    for item in plan.items:  # ~100k items on a DeepSeek-sized plan: unpacked, the sizes inline
        name, source, dtype, shape, _, _, _, fused, dequantize = item
        key: int | str | tuple[str, int] = fused if fused is not None else name
        held = DTYPE_SIZES[dtype] * math.prod(shape)
        if dequantize is not None:
            held += _decode_nbytes(plan, item) + _fusing_nbytes(plan, item)
        if source.expert is not None and not is_contiguous(source.layout):
            key = key if fused is not None else (source.tensor, source.expert)
            held *= 2
        sizes[key] = get(key, 0) + held
    _last_units = (weakref.ref(plan), sizes)
    return sizes


_DECODE_CHUNK = 4 << 22
"""Bytes of one float32 row chunk of the FP8-block decode (``numerics._CHUNK_ELEMS`` elements)."""


def _decode_nbytes(plan: Plan, item: PlannedWeight) -> int:
    """What ptq-hub's FP8-block decode holds besides the dense weight: the stored FP8 weight (one
    byte a value), its scale grid (float32 at most) and one float32 row chunk with its scales.
    Bounded by the weight: the decode never makes a block row (see ``dequantize_fp8_block``)."""
    if item.dequantize is None or item.dequantize.by_converter or plan.source.format.block is None:
        return 0
    (bh, bw), rows = plan.source.format.block, item.shape[0]
    numel = math.prod(item.shape)
    cols = numel // max(rows, 1)
    return numel + 4 * (-(-rows // bh)) * (-(-cols // bw)) + 2 * min(4 * numel, _DECODE_CHUNK)


def _fusing_nbytes(plan: Plan, item: PlannedWeight) -> int:
    """A converter that fuses in a wider dtype (a rotation: float64, its ``precision``) holds a copy
    of the weight and the product in it at once: two values of that width per weight value."""
    if item.dequantize is None or not item.dequantize.by_converter:
        return 0
    widths = [getattr(getattr(c, "precision", None), "itemsize", 0) for c in plan.source.converters]
    return 2 * max(widths, default=0) * math.prod(item.shape)


def shard_sizes(plan: Plan) -> dict[str, int]:
    """Bytes of each output shard file (data exact, header estimated generously)."""
    return {s: 8 + out + count * _HEADER_BYTES_PER_TENSOR for s, (_, out, count) in plan.shard_totals.items()}


def shard_costs(plan: Plan) -> dict[str, int]:
    """Bytes each output shard moves: its inputs read plus its output written (what parts balance)."""
    return {s: size + plan.shard_totals[s][0] for s, size in shard_sizes(plan).items()}


def resolve_budgets(plan: Plan, job: Job, work_root: Path) -> Budgets:
    """The budgets of a streamed job of ``plan``: the job's ``disk_budget`` or the default, RAM, window, workers.

    Nothing is refused here: :meth:`Footprint.check` says whether the job fits them.
    """
    disk = job.disk_budget if job.disk_budget is not None else default_disk_budget(work_root)
    disk_from = "disk_budget" if job.disk_budget is not None else f"90% of the free space in {work_root}, minus a margin"
    ram = default_ram_budget()
    biggest = max(_unit_bytes(plan).values(), default=0)
    per_worker = 2 * biggest + _SCRATCH_BYTES
    window = min(_WINDOW_MAX, max(_WINDOW_MIN, ram // 8, biggest))
    workers = max(1, min(job.workers, (ram - window) // per_worker))
    return Budgets(disk=disk, ram=ram, window=window, workers=workers, disk_from=disk_from)


def estimate_footprint(plan: Plan, budgets: Budgets, shards: Sequence[str]) -> Footprint:
    """Peak disk and RAM of a streamed job that makes the output ``shards`` of ``plan``, in that order.

    Disk: at most ``LOCAL_SHARDS`` consecutive output shards are local at once, fewer
    when they would not fit the budget together. RAM: the read-ahead window plus, per
    worker, the largest unit twice (fetched span and input buffer) and its scratch buffers.
    The verdict weighs the whole plan's largest shard and unit, whichever part runs.
    """
    sizes = shard_sizes(plan)
    order = list(shards)
    peak_disk = 0
    for i in range(len(order)):
        held = 0
        for shard in reversed(order[max(0, i - LOCAL_SHARDS + 1) : i + 1]):
            if held + sizes[shard] > budgets.disk and held:
                break
            held += sizes[shard]
        peak_disk = max(peak_disk, held)
    units = _unit_bytes(plan)
    biggest = max(units.values(), default=0)
    read_ahead = min(budgets.window, sum(units.values()))
    peak_ram = read_ahead + budgets.workers * (2 * biggest + min(_SCRATCH_BYTES, 4 * biggest))
    largest = max(sizes, key=lambda s: sizes[s]) if sizes else ""
    return Footprint(
        peak_disk=peak_disk, peak_ram=peak_ram, disk_budget=budgets.disk, ram_budget=budgets.ram,
        largest_shard=largest, largest_shard_bytes=sizes.get(largest, 0),
        largest_unit=_describe_unit(plan, max(units, key=lambda u: units[u])) if units else "",
        largest_unit_bytes=biggest, unit_ram=2 * biggest + _SCRATCH_BYTES, disk_from=budgets.disk_from,
    )


def _describe_unit(plan: Plan, key: int | str | tuple[str, int]) -> str:
    if isinstance(key, int):
        return f"fused group {plan.fused_groups[key].members}"
    if isinstance(key, tuple):
        return f"expert {key[1]} of {key[0]}"
    return f"tensor {key}"


def split_parts(plan: Plan, parts: int) -> tuple[tuple[str, ...], ...]:
    """Output shards dealt to ``parts`` parts balanced by bytes moved; each part in processing order.

    Greedy: the costliest shard first, to the lightest part (ties: the lower part).
    Within a part, the largest output shard comes first and the smallest last: the
    upload that remains after the last byte is downloaded is then the shortest.
    Deterministic, so every machine of a matrix computes the same split.

    Raises:
        InvalidOptionError: fewer than 1 part, more parts than output shards, or more than
            ``job.MAX_PARTS`` (the Hub's commit rate limit).
    """
    if parts < 1 or parts > max(1, len(plan.shards)):
        raise InvalidOptionError(
            f"{parts} parts for {len(plan.shards)} output shard(s): a part holds whole output shards, so "
            f"use between 1 and {min(len(plan.shards), MAX_PARTS)} parts."
        )
    if parts > MAX_PARTS:
        raise InvalidOptionError(
            f"{parts} parts: at most {MAX_PARTS}, so that the staging commits of all parts stay under the Hub's "
            f"128 commits per hour on the target repo; split {len(plan.shards)} output shards into {MAX_PARTS} parts "
            "or fewer."
        )
    costs = shard_costs(plan)
    sizes = shard_sizes(plan)
    loads = [0] * parts
    chosen: list[list[str]] = [[] for _ in range(parts)]
    for shard in sorted(plan.shards, key=lambda s: (-costs[s], s)):
        lightest = min(range(parts), key=lambda p: (loads[p], p))
        loads[lightest] += costs[shard]
        chosen[lightest].append(shard)
    return tuple(tuple(sorted(c, key=lambda s: (-sizes[s], s))) for c in chosen)


def job_identity(job: Job, source_sha: str, tool_version: str) -> dict[str, Any]:
    """Everything that decides the output bytes, JSON-ready: what parts must agree on."""
    observers = {
        group: {"observer": getattr(scheme.weights, "observer", None),
                "observer_kwargs": getattr(scheme.weights, "observer_kwargs", None) or {}}
        for group, scheme in job.resolved.groups
        if scheme.weights is not None
    }
    return {
        "source": job.source,
        "source_sha": source_sha,
        "scheme": job.scheme_name,
        "ignore": list(job.ignore),
        "observer": observers,
        "quantization_config": job.resolved.quantization_config_dict(),
        "tool_version": tool_version,
        **({"rotate": True} if job.rotate else {}),  # absent otherwise: unrotated jobs keep their fingerprints
    }


def fingerprint(identity: Mapping[str, Any]) -> str:
    """16 hex digits of the identity's sha256: names the staging branch."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
