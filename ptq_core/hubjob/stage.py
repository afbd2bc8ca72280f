"""Phase 2 of a Hub job: stage a part's output shards on the staging branch, streamed.

Per output shard of the part: fetch its input ranges ahead (``remote``), quantize
(``units``), write it locally, upload it and delete it (``stream``); shards and a
part manifest are committed to the staging branch ``ptq-staging-<fingerprint>``
(``staging``), at most once per ``STAGE_COMMIT_INTERVAL`` per part.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..pipeline import resolve_devices
from ..publish import TargetState, create_target, inspect_target, new_content
from ..remote import RemoteReader
from ..staging import Manifest, ShardStager, Staging, manifest_path
from ..stream import StreamReport, stream_reads, stream_shards
from ..work_folders import new_work_folder
from .prepare import WORK_PREFIX, PreparedJob
from .recovery import after_failure, refuse_changed, salvage
from .results import StageClock

__all__ = ["STAGE_COMMIT_INTERVAL", "PartStage", "SourceDownload", "Staged", "stage_part"]

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
    part = PartStage(prepared, index, count, clock)
    download = SourceDownload(prepared, clock)
    try:
        if not prepared.target_state.exists:  # nothing staged yet: read ahead while the target is set up
            download.prefetch(part.mine)
        if part.begin():
            return part.finished()
        assert part.stager is not None
        peak = _stream(prepared, part.todo, part.work.path, part.stager, download,
                       clock).peak_disk if part.todo else 0
        return part.end(peak)
    except BaseException as err:
        new = part.fail(err)
        if new is err:
            raise
        raise new from err
    finally:
        download.discard()
        part.close()


class PartStage:
    """Staging one part of one job, as steps, so that several schemes can share one stream.

    ``begin`` creates the target and reads its staging branch (the shards left to make:
    ``todo``), the caller streams them through ``stager``, then ``end`` commits a part's
    manifest, or ``fail`` keeps what was staged and undoes what holds nothing. ``close``
    removes the work folder either way.
    """

    def __init__(self, prepared: PreparedJob, index: int, count: int, clock: StageClock) -> None:
        self.prepared = prepared
        self.index, self.count = index, count
        self.clock = clock
        self.mine = prepared.planned.parts[index - 1]
        self.staging = Staging(prepared.http, prepared.target, prepared.fingerprint, prepared.identity)
        self.work = new_work_folder(prepared.work_root, WORK_PREFIX)
        self.created = False
        self.stager: ShardStager | None = None
        self.reused = 0
        self.verified: TargetState | None = None
        self.todo: list[str] = []
        self._head: str | None = None

    def begin(self) -> bool:
        """Create the target, read the staging branch; ``True`` when this part is already staged."""
        prepared, job, index, count = self.prepared, self.prepared.job, self.index, self.count
        if not prepared.target_state.exists:
            self.created = create_target(prepared.http, prepared.target, private=job.private)
            self.verified = _verify_created(prepared)
        elif job.private:
            logger.info("Target %s exists; its visibility is left as it is", prepared.target)
        head = self.staging.head()
        manifests = self.staging.manifests(head) if head is not None else {}
        done = self.staging.staged(manifests.values())
        mine_done = {s: done[s] for s in self.mine if s in done}
        self.reused = len(mine_done)
        previous = manifests.get(manifest_path(index, count))
        if previous is not None and previous.complete and previous.fingerprint == prepared.fingerprint:
            logger.info("Part %d/%d of %s is already staged on %s; nothing to do", index, count, job.source,
                        self.staging.branch)
            self.clock("stage", len(self.mine), len(self.mine))
            self._head = str(head)
            return True
        if head is None:
            self.staging.ensure()
        self.todo = [s for s in self.mine if s not in mine_done]
        logger.info("Part %d/%d: %d output shard(s) to make, %d already staged on %s", index, count,
                    len(self.todo), len(mine_done), self.staging.branch)
        manifest = Manifest(prepared.identity, prepared.fingerprint, index, count, self.mine, mine_done)

        def on_commit(_new: int) -> None:
            assert self.stager is not None
            self.clock("stage", len(self.stager.manifest.staged), len(self.mine))

        # K parts commit to one repo at once: each waits K intervals, so the repo sees one a minute.
        self.stager = ShardStager(self.staging, manifest, commit_interval=STAGE_COMMIT_INTERVAL * count,
                                  on_commit=on_commit)
        return False

    def finished(self) -> Staged:
        """What ``begin`` found: the part staged before, nothing done."""
        return Staged(str(self._head), created=self.created, target_state=self.verified)

    def end(self, peak: int) -> Staged:
        """After streaming ``todo``: a part's manifest committed; the branch head."""
        if not self.todo:
            self.clock("validate", 1, 1)
        if self.prepared.job.part is not None:
            assert self.stager is not None
            self.stager.commit()
        return Staged(str(self.staging.head()), peak, self.stager, self.created, self.verified)

    def fail(self, err: BaseException) -> BaseException:
        """After ``err``: shards uploaded so far staged, a created repo that holds nothing undone; the error to raise."""
        if self.stager is not None and self.stager.has_pending:
            salvage(self.stager)
        staged = len(self.stager.manifest.staged) if self.stager is not None else self.reused
        return after_failure(err, self.prepared, self.staging, created=self.created, staged=staged,
                             total=len(self.mine))

    def close(self) -> None:
        self.work.remove()


def _verify_created(prepared: PreparedJob) -> TargetState:
    """``main`` of the target just created: the parent of the final commit (another part may have created it).

    Raises:
        TargetChangedError: another run committed files to the new repo meanwhile (without ``overwrite``).
    """
    verified = inspect_target(prepared.http, prepared.target)
    if new_content(verified, prepared.target_state) and not prepared.job.overwrite:
        refuse_changed(verified, prepared.target_state, prepared.target)
    return verified


class SourceDownload:
    """The reader factory of a streamed job: Range reads of the pinned source, reported as ``download``.

    One per read of the source: a several-scheme job opens one for all its targets.
    ``prefetch`` starts the reads before the stream opens the reader, so the link is
    busy while the target and the staging branch are set up.
    """

    def __init__(self, prepared: PreparedJob, clock: Callable[[str, int, int], None]) -> None:
        self._prepared = prepared
        self._clock = clock
        self._lock = threading.Lock()
        self._early: tuple[list[list[tuple[str, int, int]]], RemoteReader] | None = None
        self.downloaded = 0
        self.total = 0

    def _fetched(self, nbytes: int) -> None:  # called by the range threads
        with self._lock:
            self.downloaded += nbytes
            now = self.downloaded
        self._clock("download", min(now, self.total), self.total)

    def prefetch(self, shards: Sequence[str]) -> None:
        """Start reading the input ranges of the output ``shards`` now; ``open`` hands this reader on if it fits."""
        planned = self._prepared.planned
        reads = stream_reads(planned.plan, planned.checkpoint, shards)
        reader = self._new(reads)
        self._early = (reads, reader)
        reader.start()

    def discard(self) -> None:
        """Stop a prefetching reader no stream took (the job failed before, or had other shards to make)."""
        early, self._early = self._early, None
        if early is not None:
            early[1].close()
            with self._lock:
                self.downloaded = 0

    def open(self, reads: list[list[tuple[str, int, int]]]) -> RemoteReader:
        if self._early is not None and self._early[0] == reads:
            reader, self._early = self._early[1], None
            return reader
        self.discard()
        return self._new(reads)

    def _new(self, reads: list[list[tuple[str, int, int]]]) -> RemoteReader:
        planned = self._prepared.planned
        reader = RemoteReader(self._prepared.http, planned.source, planned.checkpoint, reads,
                              window=planned.budgets.window, threads=_RANGE_THREADS, progress=self._fetched)
        self.total = reader.total_bytes
        self._clock("download", 0, self.total)
        self._clock("validate", 1, 1)  # the plan is checked and its reads are laid out
        return reader

    def finish(self) -> None:
        self._clock("download", self.total, self.total)


def _stream(prepared: PreparedJob, todo: list[str], job_dir: Path, stager: ShardStager, download: SourceDownload,
            clock: StageClock) -> StreamReport:
    """Make the output shards ``todo``: the remote reader, the stager and the progress wired to ``stream``."""
    planned = prepared.planned
    report = stream_shards(
        planned.plan, planned.checkpoint, todo, download.open, job_dir,
        upload=stager.upload, tick=stager.commit_if_due, disk_budget=planned.budgets.disk,
        devices=resolve_devices(prepared.job.device), workers=planned.budgets.workers, progress=clock,
    )
    download.finish()
    return report
