"""Phase 2 of a Hub job: stage a part's output shards on the staging branch, streamed.

Per output shard of the part: fetch its input ranges ahead (``remote``), quantize
(``units``), write it locally, upload it and delete it (``stream``); shards and a
part manifest are committed to the staging branch ``ptq-staging-<fingerprint>``
(``staging``), at most once per ``STAGE_COMMIT_INTERVAL`` per part.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from ..pipeline import resolve_devices
from ..publish import TargetState, create_target, inspect_target, new_content
from ..remote import RemoteReader
from ..staging import Manifest, ShardStager, Staging, manifest_path
from ..stream import StreamReport, stream_shards
from ..work_folders import new_work_folder
from .prepare import WORK_PREFIX, PreparedJob
from .recovery import after_failure, refuse_changed, salvage
from .results import StageClock

__all__ = ["STAGE_COMMIT_INTERVAL", "Staged", "stage_part"]

logger = logging.getLogger(__name__)

STAGE_COMMIT_INTERVAL = 60.0
"""Seconds between two commits of one part to the staging branch (the Hub allows 128 commits an hour).

The first commit also waits this long: a job shorter than that makes no staging commit at all
(a one-machine job's final commit then names every shard by sha256)."""
_RANGE_THREADS = 4


@dataclass
class Staged:
    """What staging a part left: the branch head, the local disk peak, and what the finalize step needs."""

    head: str
    peak_disk: int = 0
    stager: ShardStager | None = None  # None: the part was already staged, nothing was done
    created: bool = False  # this run created the target repo
    target_state: TargetState | None = None  # the target as verified after creating it (None: not created here)


def stage_part(prepared: PreparedJob, index: int, count: int, clock: StageClock) -> Staged:
    """Stage the output shards of part ``index`` of ``count`` that are not staged yet.

    A part commits its complete manifest last. A one-machine job (no ``job.part``)
    leaves its last uploaded shards uncommitted: its final commit on ``main`` names
    them directly, which saves a commit and reading the manifests back.
    """
    job = prepared.job
    mine = prepared.planned.parts[index - 1]
    staging = Staging(prepared.http, prepared.target, prepared.fingerprint, prepared.identity)
    created = False
    work = new_work_folder(prepared.work_root, WORK_PREFIX)
    stager: ShardStager | None = None
    reused = 0
    verified: TargetState | None = None
    try:
        if not prepared.target_state.exists:
            created = create_target(prepared.http, prepared.target, private=job.private)
            verified = _verify_created(prepared)
        elif job.private:
            logger.info("Target %s exists; its visibility is left as it is", prepared.target)
        head = staging.head()
        manifests = staging.manifests(head) if head is not None else {}
        done = staging.staged(manifests.values())
        mine_done = {s: done[s] for s in mine if s in done}
        reused = len(mine_done)
        previous = manifests.get(manifest_path(index, count))
        if previous is not None and previous.complete and previous.fingerprint == prepared.fingerprint:
            logger.info("Part %d/%d of %s is already staged on %s; nothing to do", index, count, job.source,
                        staging.branch)
            clock("stage", len(mine), len(mine))
            return Staged(str(head), created=created, target_state=verified)
        if head is None:
            staging.ensure()
        todo = [s for s in mine if s not in mine_done]
        logger.info("Part %d/%d: %d output shard(s) to make, %d already staged on %s", index, count, len(todo),
                    len(mine_done), staging.branch)
        manifest = Manifest(prepared.identity, prepared.fingerprint, index, count, mine, mine_done)

        def on_commit(_new: int) -> None:
            assert stager is not None
            clock("stage", len(stager.manifest.staged), len(mine))

        # K parts commit to one repo at once: each waits K intervals, so the repo sees one a minute.
        stager = ShardStager(staging, manifest, commit_interval=STAGE_COMMIT_INTERVAL * count, on_commit=on_commit)
        peak = _stream(prepared, todo, work.path, stager, clock).peak_disk if todo else 0
        if not todo:
            clock("validate", 1, 1)
        if job.part is not None:
            stager.commit()
        return Staged(str(staging.head()), peak, stager, created, verified)
    except BaseException as err:
        if stager is not None and stager.has_pending:
            salvage(stager)
        staged = len(stager.manifest.staged) if stager is not None else reused
        new = after_failure(err, prepared, staging, created=created, staged=staged, total=len(mine))
        if new is err:
            raise
        raise new from err
    finally:
        work.remove()


def _verify_created(prepared: PreparedJob) -> TargetState:
    """``main`` of the target just created: the parent of the final commit (another part may have created it).

    Raises:
        TargetChangedError: another run committed files to the new repo meanwhile (without ``overwrite``).
    """
    verified = inspect_target(prepared.http, prepared.target)
    if new_content(verified, prepared.target_state) and not prepared.job.overwrite:
        refuse_changed(verified, prepared.target_state, prepared.target)
    return verified


def _stream(prepared: PreparedJob, todo: list[str], job_dir: Path, stager: ShardStager, clock: StageClock
            ) -> StreamReport:
    """Make the output shards ``todo``: the remote reader, the stager and the progress wired to ``stream``."""
    downloaded = 0
    total = 0
    lock = threading.Lock()
    planned = prepared.planned

    def fetched(nbytes: int) -> None:  # called by the range threads
        nonlocal downloaded
        with lock:
            downloaded += nbytes
            now = downloaded
        clock("download", min(now, total), total)

    def open_reader(reads: list[list[tuple[str, int, int]]]) -> RemoteReader:
        nonlocal total
        reader = RemoteReader(prepared.http, prepared.planned.source, planned.checkpoint, reads,
                              window=planned.budgets.window, threads=_RANGE_THREADS, progress=fetched)
        total = reader.total_bytes
        clock("download", 0, total)
        clock("validate", 1, 1)  # the plan is checked and its reads are laid out
        return reader

    report = stream_shards(
        planned.plan, planned.checkpoint, todo, open_reader, job_dir,
        upload=stager.upload, tick=stager.commit_if_due, disk_budget=planned.budgets.disk,
        devices=resolve_devices(prepared.job.device), workers=planned.budgets.workers, progress=clock,
    )
    clock("download", total, total)
    return report
