"""One read of a Hub source, several schemes: ``quantize_many_to_hub``.

The request is a tuple of single-scheme ``Job``s that share source and revision
(``job.make_jobs``). Each is prepared as a job of its own (own target, fingerprint,
staging branch, every early check), over one pinned commit and one header read. Then:

    stage:    each scheme's ``PartStage.begin`` (its target, what its staging branch
              already holds), one ``SourceDownload`` feeding ``fanout.fan_out_shards``
              (each source byte fetched once, quantized into every scheme's shards,
              each uploaded by its own uploader), each scheme's ``end`` or ``fail``
    finalize: per scheme, its own card and ONE commit on its ``main``

A scheme that fails (its upload, its commit) keeps what it staged and does not stop
the others; the result lists it, and a rerun of the same request finishes what is
missing: the finished schemes are recognised by fingerprint, the staged shards of the
others are not fetched again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from ..errors import InvalidOptionError, PtqError
from ..fanout import FanOutTarget, SummedProgress, fan_out_shards
from ..hub_collections import add_to_collection
from ..job import Job
from ..sizes import format_bytes
from ..pipeline import resolve_devices
from ..source import ProgressCallback
from .finalize import finalize
from .prepare import PreparedJob, prepare_parts
from .recovery import done, landed_meanwhile
from .request import check_jobs
from .results import HubResult, StageClock
from .stage import PartStage, SourceDownload, Staged

__all__ = ["ManyResult", "prepare_many", "quantize_many_to_hub"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManyResult:
    """What ``quantize_many_to_hub`` made: a result per finished scheme, an error per failed one.

    Attributes:
        results: per scheme (canonical name) that finished, its :class:`HubResult`.
        errors: per scheme that failed, the error (its message says what was kept).
        downloaded: bytes fetched from the source by this run, for all schemes together.
        collection: the URL of the collection the targets were added to, if one was asked.
    """

    results: dict[str, HubResult]
    errors: dict[str, BaseException] = field(default_factory=dict)
    downloaded: int = 0
    collection: str | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_markdown(self) -> str:
        """One table per finished scheme, then the failures and the shared download."""
        blocks = [f"### {scheme}\n\n{result.to_markdown()}" for scheme, result in self.results.items()]
        blocks += [f"### {scheme}: failed\n\n{err}\n" for scheme, err in self.errors.items()]
        tail = f"Source bytes downloaded once for {len(self.results) + len(self.errors)} scheme(s): " \
               f"{format_bytes(self.downloaded)}"
        if self.collection:
            tail += f"; collection: {self.collection}"
        return "\n".join(blocks) + "\n" + tail + "\n"


def prepare_many(
    jobs: Sequence[Job], *, token: str | None = None, work_dir: str | os.PathLike[str] | None = None,
    parts: int | None = None,
) -> list[PreparedJob]:
    """Every scheme's early checks and plan, over the first one's pinned commit and headers.

    ``parts``: the count of a finalize step (default: the jobs' ``part`` count, else one).
    """
    jobs = check_jobs(jobs)
    count = parts if parts is not None else (jobs[0].part[1] if jobs[0].part is not None else 1)
    first = prepare_parts(jobs[0], count, token=token, work_dir=work_dir)
    with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="ptq-prepare") as pool:  # each: Hub calls, a plan
        others = list(pool.map(lambda job: prepare_parts(job, count, token=token, work_dir=work_dir, pinned=first),
                               jobs[1:]))
    prepared = [first, *others]
    if len({p.target for p in prepared}) != len(prepared):
        raise InvalidOptionError(f"Two schemes resolve to the same target {[p.target for p in prepared]}.")
    _check_disk_shares(prepared)
    return prepared


def _disk_share(prepared: Sequence[PreparedJob], schemes: int) -> int:
    """One scheme's share of the run's disk budget: one read feeds every scheme's disk gate at once."""
    return max(1, prepared[0].planned.budgets.disk // max(1, schemes))


def _check_disk_shares(prepared: Sequence[PreparedJob]) -> None:
    """Refuse up front what the shared read could not hold: each scheme's largest shard against its share.

    Each unfinished scheme streams through its own gate with ``disk_share`` of the budget,
    and a gate always admits its first shard, so a shard larger than the share would take
    the run past the budget.

    Raises:
        DiskSpaceError: a scheme's largest output shard is larger than its share of the budget.
    """
    live = [p for p in prepared if p.finished is None]
    if len(live) < 2:
        return  # one scheme left: its own footprint check (prepare) already holds
    share = _disk_share(prepared, len(live))
    budgets = prepared[0].planned.budgets
    for p in live:
        replace(p.planned.footprint, disk_budget=share,
                disk_from=f"1/{len(live)} of {format_bytes(budgets.disk)} ({budgets.disk_from}): "
                          f"{len(live)} schemes from one read each hold their shards at once").check()


def quantize_many_to_hub(
    jobs: Sequence[Job],
    *,
    token: str | None = None,
    progress: ProgressCallback | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    collection: str | None = None,
) -> ManyResult:
    """Quantize one read of a Hub source into several schemes, each pushed to its own repo.

    Args:
        jobs: ``make_jobs(source, "FP8_BLOCK,NVFP4A16,W4A16", ...)``: one per scheme.
        progress: as ``quantize_to_hub``'s; ``download`` counts the one read, the other
            stages are summed over the schemes.
        collection: a collection title; the finished targets are added to it (created when missing).

    Returns:
        A :class:`ManyResult`: a result per finished scheme, an error per failed one.

    Raises:
        the errors of ``prepare_hub_job`` for any scheme, before any byte is written. Later
        errors are the result's: a read or quantize error is every scheme's (what was staged is kept).
    """
    prepared = prepare_many(jobs, token=token, work_dir=work_dir)
    combined = SummedProgress(progress)
    clocks = [StageClock(combined.of(k)) for k in range(len(prepared))]
    staged, errors, downloaded = _stage_all(prepared, clocks)
    live = [k for k, p in enumerate(prepared) if _scheme(p) not in errors]
    with ThreadPoolExecutor(max_workers=max(1, len(live)), thread_name_prefix="ptq-finalize") as pool:  # Hub calls
        outcomes = list(pool.map(lambda k: _finish_or_error(prepared[k], staged[k], clocks[k]), live))
    results: dict[str, HubResult] = {}
    for k, outcome in zip(live, outcomes):
        if isinstance(outcome, HubResult):
            results[_scheme(prepared[k])] = outcome
        else:
            errors[_scheme(prepared[k])] = outcome
    url = None
    if collection and results and prepared[0].job.part is None:
        url = add_to_collection(collection, [r.repo_id for r in results.values()], token=token)
    for name, err in errors.items():
        logger.error("%s failed: %s", name, err)
    return ManyResult(results, errors, downloaded, url)


def _scheme(prepared: PreparedJob) -> str:
    return prepared.job.scheme_name


def _finish_or_error(prepared: PreparedJob, staged: Staged | str, clock: StageClock) -> HubResult | Exception:
    """``_finish``, its error returned (the other schemes' commits stand); a finished run by another process is a result."""
    try:
        return _finish(prepared, staged, clock)
    except PtqError as err:
        landed = landed_meanwhile(prepared, err)
        return err if landed is None else done(prepared, landed, clock, by_other=True)
    except Exception as err:  # noqa: BLE001 - an unexpected failure is this scheme's too, reported in ManyResult.errors
        return err


def _finish(prepared: PreparedJob, staged: Staged | str, clock: StageClock) -> HubResult:
    """A scheme's last step: its finished commit as found, a part's branch head, or the one commit on main."""
    if isinstance(staged, str):
        return done(prepared, staged, clock)
    if prepared.job.part is not None:
        return prepared.result(staged.head, clock, card="", peak_disk=staged.peak_disk)
    return finalize(prepared, 1, clock, staged=staged)


def _stage_all(prepared: list[PreparedJob], clocks: list[StageClock]
               ) -> tuple[dict[int, Staged | str], dict[str, BaseException], int]:
    """Stage every scheme from one read: per scheme what it staged (or its finished commit), the errors, bytes read."""
    staged: dict[int, Staged | str] = {}
    errors: dict[str, BaseException] = {}
    parts: dict[int, PartStage] = {}
    index, count = prepared[0].job.part or (1, 1)
    try:
        for k, p in enumerate(prepared):
            if p.finished is not None:
                staged[k] = p.finished
                continue
            part = parts[k] = PartStage(p, index, count, clocks[k])
            try:
                if part.begin():
                    staged[k] = part.finished()
            except Exception as err:  # noqa: BLE001 - this scheme alone stops
                errors[p.job.scheme_name] = part.fail(err)
        live = {k: part for k, part in parts.items() if k not in staged and _scheme(prepared[k]) not in errors}
        try:
            outcomes, downloaded = _stream(prepared, live, clocks)
        except Exception as err:  # noqa: BLE001 - opening the one read failed: every live scheme stops
            outcomes, downloaded = {k: err for k in live}, 0
        for k, part in live.items():
            outcome = outcomes.get(k, 0)
            try:
                if isinstance(outcome, BaseException):
                    raise outcome
                staged[k] = part.end(outcome)
            except Exception as err:  # noqa: BLE001 - this scheme alone stops; its staged work is kept
                errors[_scheme(prepared[k])] = part.fail(err)
    except BaseException as err:  # Ctrl-C, exit: every open scheme keeps what it uploaded, as a single run does
        for k, part in parts.items():
            if k not in staged and _scheme(prepared[k]) not in errors:
                part.fail(err)
        raise
    finally:
        for part in parts.values():
            part.close()
    return staged, errors, downloaded


def _stream(prepared: list[PreparedJob], live: dict[int, PartStage], clocks: list[StageClock]
            ) -> tuple[dict[int, int | BaseException], int]:
    """One read for every live scheme's shards left to make: per scheme its peak disk or its error; bytes read."""
    todo = {k: part for k, part in live.items() if part.todo}
    if not todo:
        return {}, 0
    lead = prepared[next(iter(todo))]

    def shared(stage: str, done_: int, total: int) -> None:
        for k in todo:
            clocks[k](stage, done_, total)

    download = SourceDownload(lead, shared)
    share = _disk_share(prepared, len(todo))  # the disk budget is the run's: split it (checked in prepare_many)
    targets = []
    for k, part in todo.items():
        assert part.stager is not None
        targets.append(FanOutTarget(prepared[k].planned.plan, part.todo, part.work.path, part.stager.upload,
                                    part.stager.commit_if_due, share, clocks[k]))
    reports = fan_out_shards(lead.planned.checkpoint, targets, download.open,
                             devices=resolve_devices(lead.job.device), workers=lead.planned.budgets.workers)
    download.finish()
    return ({k: r if isinstance(r, BaseException) else r.peak_disk for k, r in zip(todo, reports)},
            download.downloaded)
