"""A Hub checkpoint read in place: safetensors headers and tensor bytes over HTTP Range requests.

The streamed Hub job never stores an input file. Each shard's header is read
with one or two Range requests (the 8-byte length, then the JSON header) and
validated by the same code as a local shard (``sources.safetensors_header.parse_header``), so
every tensor's absolute offset in the remote file is known before any weight is
read. :class:`RemoteReader` then fetches exactly the byte ranges the work units
need, at the pinned commit: adjacent small tensors are coalesced into spans
(gaps under ``RANGE_GAP``, spans up to ``RANGE_SPAN``), a few threads fetch the
spans in the order the workers will consume them, and a byte window bounds what
is held ahead, so downloading overlaps quantizing and memory stays bounded.

Requests go through ``huggingface_hub``'s shared client session (token header,
redirects to the CDN followed, the token not sent to another host) and through
``HubHttp.call`` (the one retry policy and error mapper); a retried span resumes
at the byte where the broken transfer stopped.
"""

from __future__ import annotations

import logging
import re
from bisect import bisect_left
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ._http import HubHttp, tool_version
from .checkpoint import Checkpoint, TensorInfo, tensor_table
from .errors import (
    MissingShardError,
    NoSafetensorsError,
    SourceChangedError,
    TransferStalledError,
)
from .http_errors import is_stall, short, status_of
from .repo_files import INDEX_NAME, select_repo_files
from .source import SourceState
from .sources.safetensors_header import header_length, parse_header

logger = logging.getLogger(__name__)

__all__ = ["RANGE_GAP", "RANGE_PIECE", "RANGE_SPAN", "RemoteReader", "fetch_range", "open_remote_checkpoint"]

RANGE_GAP = 1 << 20
"""Reads closer than this are fetched as one span (the gap's bytes are cheaper than a request)."""
RANGE_SPAN = 64 << 20
"""A coalesced span grows to at most this many bytes (one tensor larger than it is its own span)."""
RANGE_PIECE = 16 << 20
"""Bytes per Range request: a span is fetched as pieces on several connections at once."""
_HEADER_PROBE = 256 << 10
"""First read of a shard: the 8-byte length and, for most checkpoints, the whole header."""
_HEADER_THREADS = 8
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


# --- one Range request ---------------------------------------------------------
def fetch_range(
    http: HubHttp, source: SourceState, path: str, start: int, nbytes: int, sink: Callable[[bytes], None]
) -> None:
    """Stream bytes ``[start, start + nbytes)`` of ``path`` at the pinned commit into ``sink``, retried.

    A retry after a broken or stalled transfer asks only for the bytes not received yet. A
    transfer stalls when nothing arrives for ``constants.HTTP_READ_TIMEOUT`` or less than
    ``STALL_MIN_BYTES`` in a ``STALL_WINDOW`` (``http_deadlines.install_transfer_deadlines``).

    Raises:
        SourceChangedError: the file is gone at the pinned commit (repo deleted, history
            rewritten), or its size is not the one inspected at the start.
        TransferStalledError: every attempt stalled (a ``HubNetworkError``; it names the byte).
        HubNetworkError: other transient failures outlasted the retries.
    """
    if nbytes <= 0:
        return
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    url = hf_hub_url(source.repo_id, path, revision=source.sha, endpoint=http.endpoint)
    headers = build_hf_headers(token=http.token or False, library_name="ptq-hub", library_version=tool_version())
    expected_size = source.files.get(path)
    received = 0

    def attempt() -> None:
        nonlocal received
        first = start + received
        last = start + nbytes - 1
        # identity encoding: the body is the file's bytes, read raw (2-3x less CPU than decoded chunks)
        ranged = {**headers, "Range": f"bytes={first}-{last}", "Accept-Encoding": "identity"}
        try:
            # the session applies the read timeout and the throughput floor (http_deadlines.install_transfer_deadlines)
            with get_session().stream("GET", url, headers=ranged) as response:
                if response.status_code >= 400:
                    response.read()
                    hf_raise_for_status(response)
                _check_range(response, path, first, last, expected_size)
                for chunk in response.iter_raw():
                    # sliced (a copy) only past the range's end: the link's bytes are copied once less
                    take = chunk if len(chunk) <= nbytes - received else chunk[: nbytes - received]
                    if take:
                        sink(take)
                        received += len(take)
        except Exception as err:
            if not is_stall(err):
                raise
            raise TransferStalledError(
                f"{path} stalled at byte {start + received} (range {start}-{start + nbytes - 1}, "
                f"{received} of {nbytes} bytes received): {short(err)}"
            ) from err
        if received < nbytes:  # the server closed early: transient, the retry resumes here
            raise ConnectionError(f"{path}: the transfer stopped after {received} of {nbytes} bytes")

    def gone(err: Exception) -> SourceChangedError | None:
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        if isinstance(err, SourceChangedError):
            return err
        if isinstance(err, (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)) or status_of(err) in (
            404, 410, 416,
        ):
            return SourceChangedError(http.redact(
                f"{path} of {source.repo_id} at commit {source.sha[:12]} can no longer be read ({short(err)}): "
                "the source changed while the job ran (file removed, history rewritten, or repo deleted). "
                "Rerun the job; it pins the source's commit anew."
            ))
        return None

    http.call(f"download {path}", attempt, role="source", repo_id=source.repo_id, translate=gone)


def _check_range(response, path: str, first: int, last: int, expected_size: int | None) -> None:
    """A 206 for exactly the bytes asked, of a file of the inspected size; anything else means a changed file."""
    if response.headers.get("content-encoding", "identity").lower() != "identity":
        raise SourceChangedError(
            f"{path}: the server answered a Range request with a {response.headers['content-encoding']!r}-encoded "
            "body although the raw bytes were asked for; ptq-hub cannot read tensors from it."
        )
    match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
    if response.status_code != 206 or match is None or (int(match[1]), int(match[2])) != (first, last):
        raise SourceChangedError(
            f"{path}: asked for bytes {first}-{last}, the server answered HTTP {response.status_code} "
            f"with range {response.headers.get('content-range')!r}. The file is shorter than its header says or "
            "the server ignores Range requests; rerun the job."
        )
    if expected_size is not None and match[3] != "*" and int(match[3]) != expected_size:
        raise SourceChangedError(
            f"{path} is {match[3]} bytes at the pinned commit, not the {expected_size} bytes inspected at the start; "
            "the source changed while the job ran. Rerun the job."
        )


# --- headers -------------------------------------------------------------------
def open_remote_checkpoint(
    http: HubHttp, source: SourceState, *, progress: Callable[[int], None] | None = None
) -> Checkpoint:
    """Every shard header of a pinned Hub source, read with Range requests and validated.

    Offsets are the real ones, so the result can be planned *and* read
    (:class:`RemoteReader`). ``progress(nbytes)`` is called with each header's bytes.

    Raises:
        NoSafetensorsError: the source has no safetensors shard.
        MissingShardError: the index names a shard that is not in the repo, or a tensor
            that its shard does not hold.
        CorruptCheckpointError: a header is not valid (see ``sources.safetensors_header.parse_header``),
            or a tensor appears in two shards.
        SourceChangedError / HubNetworkError: as ``fetch_range``.
    """
    shards = source.shards
    if not shards:
        raise NoSafetensorsError(f"{source.repo_id} has no *.safetensors weights at commit {source.sha[:12]}.")
    missing = [s for s in shards if s not in source.files]
    if missing:
        raise MissingShardError(
            f"{INDEX_NAME} of {source.repo_id} names shard(s) {', '.join(missing)} that are not in the repo; "
            "the checkpoint is incomplete."
        )
    report = progress or (lambda nbytes: None)

    def read(shard: str) -> tuple[dict[str, dict], int, dict[str, str]]:
        size = source.files[shard]
        head = bytearray()
        fetch_range(http, source, shard, 0, min(size, _HEADER_PROBE), head.extend)
        n = header_length(bytes(head[:8]), size, shard)
        if 8 + n > len(head):
            fetch_range(http, source, shard, len(head), 8 + n - len(head), head.extend)
        report(8 + n)
        return parse_header(bytes(head[8 : 8 + n]), size, shard)

    with ThreadPoolExecutor(max_workers=min(_HEADER_THREADS, len(shards)), thread_name_prefix="ptq-header") as pool:
        parsed = list(pool.map(read, shards))

    tensors, metadata = tensor_table(zip(shards, parsed, strict=True), source.weight_map)
    extra = tuple(f for f in select_repo_files(source.files) if not f.endswith(".safetensors") and f != INDEX_NAME)
    return Checkpoint(Path(source.repo_id), shards, tensors, extra, (), metadata)


# --- tensor bytes --------------------------------------------------------------
@dataclass
class _Span:
    """Consecutive bytes of one shard that several reads share, held in one buffer.

    It is fetched as pieces of at most ``piece`` bytes, several at a time and in
    order, so the span the workers need next arrives at the link's full speed
    instead of sharing it with the spans behind it.
    """

    index: int
    shard: str
    start: int
    end: int
    readers: int = 0  # reads not yet consumed
    state: str = "pending"  # pending -> fetching -> ready -> released
    data: bytearray | None = None
    next_piece: int = 0  # offset (from start) of the first piece no thread has taken
    pieces_left: int = 0  # pieces taken and not finished, plus those not taken
    waiting: int = 0  # workers blocked on it

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass
class _Plan:
    spans: list[_Span] = field(default_factory=list)
    by_read: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)  # (shard, offset) -> (span, nbytes)


def _coalesce(units: Sequence[Sequence[tuple[str, int, int]]], gap: int, span_max: int) -> _Plan:
    """Spans in consumption order; a read joins the previous span only if it directly follows it.

    A gap is bridged only when no other read starts inside it: bytes that a later span
    reads are never fetched twice (units need not come in file order).
    """
    plan = _Plan()
    starts: dict[str, list[int]] = {}
    for reads in units:
        for shard, offset, _ in reads:
            starts.setdefault(shard, []).append(offset)
    for offsets in starts.values():
        offsets.sort()
    for reads in units:
        for shard, offset, nbytes in reads:
            last = plan.spans[-1] if plan.spans else None
            if (last is not None and last.shard == shard and 0 <= offset - last.end < gap
                    and offset + nbytes - last.start <= span_max and not _starts_in(starts[shard], last.end, offset)):
                last.end = offset + nbytes
            else:
                last = _Span(len(plan.spans), shard, offset, offset + nbytes)
                plan.spans.append(last)
            last.readers += 1
            plan.by_read[(shard, offset)] = (last.index, nbytes)
    return plan


def _starts_in(offsets: list[int], low: int, high: int) -> bool:
    """Whether a read starts in ``[low, high)`` (``offsets`` sorted)."""
    i = bisect_left(offsets, low)
    return i < len(offsets) and offsets[i] < high


class RemoteReader:
    """Reads a Hub checkpoint's tensors for a known sequence of work units, prefetched.

    Args:
        http, source: the pinned source (``inspect_source``).
        checkpoint: its remote checkpoint (``open_remote_checkpoint``).
        units: per work unit, in the order the workers take them, the ``(shard, offset,
            nbytes)`` ranges it reads (``pipeline.unit_reads``). Each range is read once.
        window: bytes of fetched, not yet consumed spans held ahead of the workers. A span
            a worker is waiting for is fetched even beyond it, so the window never blocks progress.
        threads: concurrent Range requests.
        progress: ``progress(nbytes)`` per received chunk.
        gap, span_max: coalescing of reads into spans (``RANGE_GAP``, ``RANGE_SPAN``).
        piece: bytes per Range request (``RANGE_PIECE``).

    Fetching starts with ``start()`` or ``with reader:``. The pipeline's reader protocol
    (``read_into``, ``copy_to``) is thread-safe; a failed fetch is raised in every worker
    that needs its bytes (and in those that come later).
    """

    def __init__(
        self,
        http: HubHttp,
        source: SourceState,
        checkpoint: Checkpoint,
        units: Sequence[Sequence[tuple[str, int, int]]],
        *,
        window: int,
        threads: int = 4,
        progress: Callable[[int], None] | None = None,
        gap: int = RANGE_GAP,
        span_max: int = RANGE_SPAN,
        piece: int = RANGE_PIECE,
    ) -> None:
        self.checkpoint = checkpoint
        self._http = http
        self._source = source
        self._window = window
        self._piece = piece
        self._progress = progress or (lambda nbytes: None)
        plan = _coalesce(units, gap, span_max)
        self._spans = plan.spans
        self._by_read = plan.by_read
        for span in self._spans:
            span.pieces_left = max(1, -(-span.size // piece))
        self._next = 0  # lowest span index with pieces no thread has taken
        self._wanted: list[_Span] = []  # spans a worker waits for, whose pieces are not all taken
        self._held = 0  # bytes of spans fetching or ready
        self._error: BaseException | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._fetch_loop, name=f"ptq-range-{i}", daemon=True)
            for i in range(max(1, threads) if self._spans else 0)
        ]

    @property
    def span_count(self) -> int:
        return len(self._spans)

    @property
    def total_bytes(self) -> int:
        """Bytes this reader downloads: the reads and the small gaps coalesced between them."""
        return sum(span.size for span in self._spans)

    # the reader protocol -------------------------------------------------------
    def read_into(self, info: TensorInfo, out: torch.Tensor, start: int = 0) -> None:
        """Fill ``out`` (a CPU uint8 tensor) with the tensor's bytes from ``start`` on."""
        span, data = self._acquire(info.shard, info.offset + start)
        try:
            n = out.numel()
            if n:
                out.copy_(torch.frombuffer(data, dtype=torch.uint8, count=n, offset=info.offset + start - span.start))
        finally:
            self._release(span)

    def copy_to(self, writer, name: str, info: TensorInfo, start: int) -> None:
        """Write output tensor ``name`` of ``writer`` (a ``ShardWriter``) from the fetched bytes."""
        span, data = self._acquire(info.shard, info.offset + start)
        try:
            nbytes = self._by_read[(info.shard, info.offset + start)][1]
            offset = info.offset + start - span.start
            view = (torch.frombuffer(data, dtype=torch.uint8, count=nbytes, offset=offset) if nbytes
                    else torch.empty(0, dtype=torch.uint8))
            writer.write(name, view)
        finally:
            self._release(span)

    def start(self) -> None:
        """Start fetching (``with reader:`` does it); again, a no-op: a reader started early is then entered."""
        for thread in self._threads:
            if thread.ident is None:
                thread.start()

    def close(self) -> None:
        """Stop fetching and drop every buffer (after success or failure)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join()
        for span in self._spans:
            span.data = None

    def __enter__(self) -> RemoteReader:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # internals ----------------------------------------------------------------
    def _acquire(self, shard: str, offset: int) -> tuple[_Span, bytearray]:
        key = (shard, offset)
        if key not in self._by_read:
            raise KeyError(f"{shard}@{offset} was not among the reads planned for this reader")
        span = self._spans[self._by_read[key][0]]
        with self._cond:
            span.waiting += 1
            if span.next_piece < span.size or (span.size == 0 and span.state == "pending"):
                self._wanted.append(span)
                self._cond.notify_all()
            try:
                while span.state != "ready":
                    if self._error is not None:
                        raise self._error
                    if self._closed:
                        raise RuntimeError("the remote reader was closed")
                    self._cond.wait()
            finally:
                span.waiting -= 1
            assert span.data is not None
            return span, span.data

    def _release(self, span: _Span) -> None:
        with self._cond:
            span.readers -= 1
            if span.readers == 0:
                span.state = "released"
                span.data = None
                self._held -= span.size
                self._cond.notify_all()

    def _has_pieces(self, span: _Span) -> bool:
        return span.state == "pending" or (span.state == "fetching" and span.next_piece < span.size)

    def _pick(self) -> tuple[_Span, int, int] | None:
        """The next piece: of a span a worker waits for, else in order while the window allows."""
        while self._wanted and not self._has_pieces(self._wanted[0]):
            self._wanted.pop(0)
        if self._wanted:
            return self._take(self._wanted[0])
        while self._next < len(self._spans) and not self._has_pieces(self._spans[self._next]):
            self._next += 1
        if self._next == len(self._spans):
            return None
        span = self._spans[self._next]
        if span.state == "fetching" or self._held == 0 or self._held + span.size <= self._window:
            return self._take(span)
        return None

    def _take(self, span: _Span) -> tuple[_Span, int, int]:
        if span.state == "pending":  # its bytes count against the window from its first piece on
            span.state = "fetching"
            span.data = bytearray(span.size)
            self._held += span.size
        first = span.next_piece
        span.next_piece = min(span.size, first + self._piece)
        return span, first, span.next_piece

    def _fetch_loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed or self._error is not None:
                        return
                    picked = self._pick()
                    if picked is not None:
                        break
                    if self._next >= len(self._spans) and not self._wanted:
                        return
                    self._cond.wait()
            span, first, last = picked
            try:
                assert span.data is not None
                view = memoryview(span.data)[first:last]
                filled = 0

                def sink(chunk: bytes) -> None:
                    nonlocal filled
                    view[filled : filled + len(chunk)] = chunk
                    filled += len(chunk)
                    self._progress(len(chunk))

                fetch_range(self._http, self._source, span.shard, span.start + first, last - first, sink)
            except BaseException as err:  # noqa: BLE001 - handed to the workers, who raise it
                with self._cond:
                    if self._error is None:
                        self._error = err
                    self._cond.notify_all()
                return
            with self._cond:
                span.pieces_left -= 1
                if span.pieces_left == 0:
                    span.state = "ready"
                    self._cond.notify_all()
