"""Output shard by output shard through a bounded local folder: read ahead, quantize, upload, overlapped.

Three stages run at once, joined by bounded hand-offs:

* **read**: the reader (``remote.RemoteReader``) fetches the byte ranges of the
  work units ahead of the workers, within its byte window;
* **quantize**: ``workers`` threads take the units in order (at most two per
  worker queued), each writing into its output shard (``writer.ShardWriter``);
  the dispatcher opens an output shard only when it fits the **disk budget**
  next to the shards still on disk (and at most ``parts.LOCAL_SHARDS`` of them);
* **upload**: ``UPLOAD_THREADS`` threads hand finished shards, taken in order, to
  ``upload`` (which returns once the bytes are safe on the Hub), delete each local
  file, and so free its room for the next shard.

So on a bandwidth-limited link the wall time approaches the slowest stage, and
the local disk never holds more than the budget, whatever the model's size.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from itertools import cycle
from pathlib import Path

import torch

from .checkpoint import Checkpoint
from .errors import DiskSpaceError
from .parts import LOCAL_SHARDS, shard_sizes
from .pipeline import TensorReader, process_unit, torch_threads, unit_reads, work_units
from .plan import Plan
from .sizes import format_bytes
from .source import ProgressCallback
from .writer import ShardWriter

logger = logging.getLogger(__name__)

__all__ = ["ReaderFactory", "StreamReport", "stream_shards"]

ReaderFactory = Callable[[list[list[tuple[str, int, int]]]], AbstractContextManager[TensorReader]]
"""Opens a reader for the units' input ranges, in the order the workers will take them."""

_TICK_SECONDS = 1.0  # how often a waiting uploader calls ``tick`` (commits that fell due)
UPLOAD_THREADS = 2
"""Shards uploaded at once: one is hashed and announced while the other's bytes travel."""


@dataclass(frozen=True)
class StreamReport:
    """What a stream did: output shards uploaded, and the most local disk its shards held at once."""

    shards: tuple[str, ...]
    peak_disk: int


class _State:
    """Shared by the dispatcher, the workers and the uploader; every field under ``cond``."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.failure: BaseException | None = None
        self.local_bytes = 0
        self.local_shards = 0
        self.peak_disk = 0
        self.in_flight = 0
        self.uploaded = 0
        self.finished: set[str] = set()

    def fail(self, err: BaseException) -> None:
        with self.cond:
            if self.failure is None:
                self.failure = err
            self.cond.notify_all()


def stream_shards(
    plan: Plan,
    checkpoint: Checkpoint,
    shards: Sequence[str],
    open_reader: ReaderFactory,
    folder: Path,
    *,
    upload: Callable[[str, Path], None],
    tick: Callable[[], None],
    disk_budget: int,
    devices: Sequence[torch.device],
    workers: int,
    progress: ProgressCallback,
) -> StreamReport:
    """Quantize the output ``shards`` of ``plan`` one after another into ``folder`` and upload each.

    Args:
        open_reader: builds the reader for the units' input ranges (see ``ReaderFactory``).
        upload: ``upload(shard, path)``, returning once the shard is safe on the Hub.
        tick: called by the uploaders between shards and about every second while they wait.
        disk_budget: bytes of output shards that may sit in ``folder`` at once.
        progress: stages ``quantize`` (units), ``write`` (shards finished), ``upload`` (bytes).

    Returns:
        a :class:`StreamReport`. The folder holds no shard afterwards.

    Raises:
        whatever a stage raised first (the others stop); ``DiskSpaceError`` when the
        disk fills up below the budget (another process took the space).
    """
    units = [(shard, unit) for shard in shards for unit in work_units(plan, checkpoint, shard=shard)]
    remaining = Counter(shard for shard, _ in units)
    expected = shard_sizes(plan)
    upload_total = sum(expected[s] for s in shards)
    state = _State()
    writers: dict[str, ShardWriter] = {}
    uploaded = 0

    next_upload = 0  # index in ``shards`` of the next shard an uploader takes

    def uploader() -> None:
        """Take finished shards in order; several uploaders overlap one's hashing with another's transfer."""
        nonlocal uploaded, next_upload
        try:
            while True:
                with state.cond:
                    if next_upload == len(shards) or state.failure is not None:
                        return
                    shard = shards[next_upload]
                    next_upload += 1
                    while shard not in state.finished and state.failure is None:
                        state.cond.wait(_TICK_SECONDS)
                        if shard not in state.finished and state.failure is None:
                            state.cond.release()
                            try:
                                tick()
                            finally:
                                state.cond.acquire()
                    if state.failure is not None:
                        return
                path = folder / shard
                size = writers[shard].size
                upload(shard, path)
                path.unlink()
                with state.cond:
                    state.local_bytes -= size
                    state.local_shards -= 1
                    state.uploaded += 1
                    uploaded += size
                    # the total is estimated from the plan (headers generously): the last shard completes it
                    done = upload_total if state.uploaded == len(shards) else min(uploaded, upload_total)
                    state.cond.notify_all()
                progress("upload", done, upload_total)
                tick()
        except BaseException as err:  # noqa: BLE001 - handed to the dispatcher, which raises it
            state.fail(err)

    def admit(shard: str) -> None:
        """Wait until the shard fits the disk budget next to those on disk, then open it."""
        size = expected[shard]
        with state.cond:
            while state.failure is None and state.local_shards and (
                state.local_shards >= LOCAL_SHARDS or state.local_bytes + size > disk_budget
            ):
                state.cond.wait()
            if state.failure is not None:
                return
            writer = _open_writer(folder, shard, plan)
            writers[shard] = writer
            state.local_bytes += writer.size
            state.local_shards += 1
            state.peak_disk = max(state.peak_disk, state.local_bytes)
        logger.debug("Writing %s (%s; %s of output shards on disk)", shard, format_bytes(writer.size),
                     format_bytes(state.local_bytes))

    done_units = 0
    done_shards = 0
    device_for = cycle(devices)

    with open_reader([unit_reads(checkpoint, unit) for _, unit in units]) as reader:
        progress("quantize", 0, len(units))
        progress("write", 0, len(shards))

        def run(shard: str, unit, device: torch.device) -> None:
            nonlocal done_units, done_shards
            try:
                with state.cond:
                    if state.failure is not None:
                        return
                try:
                    process_unit(plan, unit, reader, writers, device)
                except OSError as err:
                    raise _disk_error(err, folder, shard) from err
                with state.cond:
                    done_units += 1
                    remaining[shard] -= 1
                    last = remaining[shard] == 0
                    units_now = done_units
                progress("quantize", units_now, len(units))
                if last:
                    try:
                        writers[shard].close()
                    except OSError as err:
                        raise _disk_error(err, folder, shard) from err
                    with state.cond:
                        done_shards += 1
                        shards_now = done_shards
                        state.finished.add(shard)
                        state.cond.notify_all()
                    progress("write", shards_now, len(shards))
            except BaseException as err:  # noqa: BLE001 - the dispatcher raises the first failure
                state.fail(err)
            finally:
                with state.cond:
                    state.in_flight -= 1
                    state.cond.notify_all()

        upload_threads = [threading.Thread(target=uploader, name=f"ptq-upload-{i}", daemon=True)
                          for i in range(min(UPLOAD_THREADS, len(shards)))]
        for thread in upload_threads:
            thread.start()
        try:
            with torch_threads(workers), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ptq") as pool:
                for shard, unit in units:
                    if shard not in writers:
                        admit(shard)
                    with state.cond:
                        while state.failure is None and state.in_flight >= 2 * workers:
                            state.cond.wait()
                        if state.failure is not None:
                            break
                        state.in_flight += 1
                    pool.submit(run, shard, unit, next(device_for))
            for thread in upload_threads:
                thread.join()
        except BaseException as err:
            state.fail(err)
            for thread in upload_threads:
                thread.join()
        finally:
            for shard, writer in writers.items():
                if shard not in state.finished:
                    writer.abort()
    if state.failure is not None:
        raise state.failure
    return StreamReport(shards=tuple(shards), peak_disk=state.peak_disk)


def _open_writer(folder: Path, shard: str, plan: Plan) -> ShardWriter:
    try:
        return ShardWriter(folder / shard, plan.shard_outputs(shard))
    except OSError as err:
        raise _disk_error(err, folder, shard) from err


def _disk_error(err: OSError, folder: Path, shard: str) -> OSError:
    """A full disk becomes a ``DiskSpaceError`` that says what to do; other I/O errors stay as they are."""
    if err.errno not in (errno.ENOSPC, errno.EDQUOT):
        return err
    return DiskSpaceError(
        f"The disk of {folder} filled up while writing output shard {shard} ({err.strerror or os.strerror(err.errno)}): "
        "something else "
        "took the space the disk budget counted on. Free some space or lower disk_budget (--disk-budget), "
        "then rerun: shards already staged are not redone."
    )
