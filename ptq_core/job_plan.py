"""One plan per job: ``plan_job`` reads the source once and returns everything decided before a weight byte.

A job is planned the same way whatever runs it (``quantize_job`` on a folder, a
streamed Hub job, its parts, its finalize step, a preview): open the checkpoint
(local headers, or Range reads of a pinned Hub commit), read ``config.json`` once,
``plan.plan_model``, then the streamed job's budgets, parts and footprint. The
:class:`JobPlan` carries all of it, so nothing is planned twice and the footprint
is never grafted onto a ``Plan`` afterwards.

One read of the source into several schemes (``hubjob.many``) plans one
``JobPlan`` per scheme over the same ``checkpoint`` (passed in) and ``config``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import constants
from ._http import HubHttp
from .checkpoint import Checkpoint, TensorInfo, open_checkpoint, read_config
from .job import Job
from .units import LocalReader
from .parts import Budgets, Footprint, estimate_footprint, resolve_budgets, split_parts
from .plan import Plan
from .planner import plan_model
from .remote import RemoteReader, open_remote_checkpoint
from .rotation import rotation_chain
from .sizes import format_bytes
from .source import SourceState

logger = logging.getLogger(__name__)

__all__ = ["JobPlan", "default_work_root", "plan_job"]


@dataclass(frozen=True)
class JobPlan:
    """A job's plan with what a streamed run of it holds: budgets, parts, footprint and, on the Hub, its identity.

    Attributes:
        job: the request.
        plan: which tensor gets which scheme, the exact output layout and sizes.
        checkpoint: the source's tensors (local headers, or read over HTTP Range requests).
        config: the source's ``config.json`` (read once), ``None`` without one.
        budgets: disk, RAM, read-ahead and workers of a streamed run on this machine.
        footprint: its peaks next to the budgets, and the verdict (``footprint.fits``).
        parts: the output shards of each part (one part unless ``job.part`` says ``k``).
        source: the pinned Hub source; ``None`` for a local folder.
    """

    job: Job
    plan: Plan
    checkpoint: Checkpoint
    config: Mapping[str, Any] | None
    budgets: Budgets
    footprint: Footprint
    parts: tuple[tuple[str, ...], ...]
    source: SourceState | None = None

    @property
    def revision(self) -> str | None:
        """The pinned source commit (``None`` for a local folder)."""
        return self.source.sha if self.source is not None else None

    def summary(self) -> dict[str, Any]:
        """The plan's counts and sizes with the footprint's peaks and budgets, JSON-ready."""
        return {**self.plan.summary(), **self.footprint.as_dict()}

    def to_markdown(self) -> str:
        """The plan's tables, then the streamed job's peaks against its budgets."""
        fp = self.footprint
        return self.plan.to_markdown() + "\n".join([
            "", "| streamed Hub job | peak | budget |", "|---|---:|---:|",
            f"| disk: output shards awaiting upload | {format_bytes(fp.peak_disk)} | {format_bytes(fp.disk_budget)} |",
            f"| RAM: read-ahead + tensors in flight | {format_bytes(fp.peak_ram)} | {format_bytes(fp.ram_budget)} |",
        ]) + "\n"


def default_work_root() -> Path:
    """``PTQ_HUB_CACHE``, or its first existing parent (whose disk it will be on) when it does not exist yet."""
    root = Path(constants.PTQ_HUB_CACHE)
    while not root.exists():
        root = root.parent
    return root


def plan_job(
    job: Job, source: Path | SourceState, *, http: HubHttp | None = None, work_root: Path | None = None,
    parts: int | None = None, checkpoint: Checkpoint | None = None,
) -> JobPlan:
    """Plan ``job`` on ``source``: a local checkpoint folder, or a Hub source pinned by ``source.inspect_source``.

    Reads headers only (HTTP Range requests for a Hub source, through ``http``) and
    ``config.json`` once (a Hub source's comes with its ``SourceState``). Budgets are
    those of ``work_root`` (default: :func:`default_work_root`); nothing is refused here:
    ``footprint.check()`` does that. ``parts``: how many parts the job is cut into
    (default: ``job.part``'s count, else one); the footprint is that of ``job.part``'s
    shards, or of the first part. ``checkpoint``: this source's, already opened (the
    schemes of one read share its headers instead of reading them again).

    Raises:
        the errors of ``plan.plan_model`` and of reading the checkpoint's headers;
        InvalidOptionError: ``job.part`` asks for more parts than output shards.
    """
    if isinstance(source, SourceState):
        if http is None:
            raise TypeError("plan_job needs http= to read a Hub source's headers")
        checkpoint = checkpoint or open_remote_checkpoint(http, source)
        config = source.config
    else:
        checkpoint = checkpoint or open_checkpoint(source)
        config = read_config(source)
    converters = job.converters
    if job.rotate:  # the chain ends with the rotation; its norm scales are read before planning
        hub = source if isinstance(source, SourceState) else None
        converters = rotation_chain(checkpoint, config, converters,
                                    lambda infos: _norm_reader(checkpoint, infos, http, hub))
    plan = plan_model(checkpoint, job.resolved, config, converters, append=job.append, tp=job.tp)
    if parts is None:
        parts = job.part[1] if job.part is not None else 1
    split = split_parts(plan, parts)
    budgets = resolve_budgets(plan, job, work_root if work_root is not None else default_work_root())
    mine = split[job.part[0] - 1] if job.part is not None and job.part[1] == parts else split[0]
    return JobPlan(
        job=job, plan=plan, checkpoint=checkpoint, config=config, budgets=budgets,
        footprint=estimate_footprint(plan, budgets, mine), parts=split,
        source=source if isinstance(source, SourceState) else None,
    )


def _norm_reader(checkpoint: Checkpoint, infos: list[TensorInfo], http: HubHttp | None, source: SourceState | None):
    """A reader of just ``infos`` (a rotated job's norm scales): ``pread`` locally, Range reads on the Hub."""
    if source is None or http is None:
        return LocalReader(checkpoint)
    return RemoteReader(http, source, checkpoint, [[(i.shard, i.offset, i.nbytes) for i in infos]],
                        window=max(1, sum(i.nbytes for i in infos)))
