"""Transfer deadlines on huggingface_hub's shared client: timeouts and a throughput floor.

Without them a peer that stops sending or reading holds a job forever (the client's
``timeout=None``), and one that trickles is never caught by any timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from . import constants
from .errors import TransferStalledError
from .http_errors import httpx_module

__all__ = ["install_transfer_deadlines"]

# huggingface_hub's shared httpx client is built with `timeout=None`, and LFS uploads
# (`lfs._upload_single_part` / `_upload_parts_iteratively`: `http_backoff("PUT", url,
# data=fileobj)`) pass none, so a peer that stops sending or reading holds the job
# forever, and one that trickles (100 bytes every 2 s) is never caught by any timeout.
# Through the client's public hook (`set_client_factory`) every request of that client,
# ours (`remote.fetch_range`) and its own (LFS parts, commits, downloads), gets:
#   * connect / read / write timeouts (`constants.HTTP_*_TIMEOUT`) where it has none;
#   * a throughput floor on its request and response bodies: fewer than
#     `STALL_MIN_BYTES` moved in a `STALL_WINDOW` raises `TransferStalledError`.
# Both are transient to `HubHttp.call`, which retries (a Range download resumes at its
# byte). A stall is noticed at the next chunk, and a silent peer within the read
# timeout, so detection takes at most about `STALL_WINDOW + HTTP_READ_TIMEOUT`.
_UPLOAD_PIECE = 64 << 10
"""Request bodies are sent in pieces at most this big, so that the throughput check runs often on a slow reader.

The default floor's bytes (``STALL_MIN_BYTES``): a reader just under the floor is caught within
about two windows. It is also the size of the chunks httpx reads from a file, so an LFS upload's
chunks go out whole; 16 KiB pieces cost ~2 CPU-seconds per GB uploaded in slicing and send calls."""
_installed = False
_install_lock = threading.Lock()


def install_transfer_deadlines() -> None:
    """Make huggingface_hub's shared client apply ptq-hub's timeouts and throughput floor (idempotent).

    Uses the client's public ``set_client_factory``; the client it builds is the library's
    default one plus two event hooks, so headers, redirects and offline mode are unchanged.
    The limits are read per request, so changing the constants takes effect at once.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        from huggingface_hub import set_client_factory

        set_client_factory(_deadline_client)
        _installed = True


def _deadline_client():
    # the library's own factory (utils/_http.py), so that its request hook stays first
    from huggingface_hub.utils._http import default_client_factory

    client = default_client_factory()
    hooks = client.event_hooks
    hooks.setdefault("request", []).append(_apply_deadlines)
    hooks.setdefault("response", []).append(_watch_response)
    client.event_hooks = hooks
    return client


def _apply_deadlines(request) -> None:
    """Request hook: default timeouts where the caller set none; a watched body when there is one."""
    timeout = dict(request.extensions.get("timeout") or {})
    defaults = {"connect": constants.HTTP_CONNECT_TIMEOUT, "read": constants.HTTP_READ_TIMEOUT,
                "write": constants.HTTP_READ_TIMEOUT, "pool": None}
    request.extensions["timeout"] = {key: timeout.get(key) or value for key, value in defaults.items()}
    has_body = request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
    if has_body and not isinstance(request.stream, _WatchedBody):
        size = request.headers.get("content-length")
        request.stream = _WatchedBody(request.stream, _Deadline(
            f"upload to {_where(request.url)}", int(size) if size and size.isdigit() else None))


def _watch_response(response) -> None:
    """Response hook: the body is read under the throughput floor."""
    if response.request.method == "HEAD":
        return
    size = response.headers.get("content-length")
    response.stream = _WatchedStream(response.stream, _Deadline(
        f"download from {_where(response.request.url)}", int(size) if size and size.isdigit() else None))


def _where(url: Any) -> str:
    """A URL for messages: no query (signed CDN links carry credentials there)."""
    text = str(url)
    return text.split("?", 1)[0]


class _Deadline:
    """Bytes moved per window; ``advance`` raises ``TransferStalledError`` below the floor."""

    def __init__(self, what: str, total: int | None) -> None:
        self.what = what
        self.total = total
        self.window = constants.STALL_WINDOW
        self.floor = constants.STALL_MIN_BYTES
        self.moved = 0
        self._mark = time.monotonic()
        self._mark_moved = 0

    def advance(self, nbytes: int) -> None:
        self.moved += nbytes
        now = time.monotonic()
        if now - self._mark < self.window:
            return
        need = self.floor if self.total is None else min(self.floor, self.total - self._mark_moved)
        in_window = self.moved - self._mark_moved
        if in_window < need and (self.total is None or self.moved < self.total):
            raise TransferStalledError(
                f"{self.what} stalled: {in_window} bytes in the last {now - self._mark:.1f} s, under the floor of "
                f"{self.floor} bytes per {self.window:g} s, after {self.moved}"
                + (f" of {self.total} bytes" if self.total is not None else " bytes")
            )
        self._mark, self._mark_moved = now, self.moved


class _WatchedBody(httpx_module().SyncByteStream):  # type: ignore[misc]
    """A request body sent in small pieces, each counted against the deadline."""

    def __init__(self, inner, deadline: _Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            for start in range(0, len(chunk), _UPLOAD_PIECE):
                piece = chunk[start : start + _UPLOAD_PIECE]
                self._deadline.advance(0)  # the previous piece's send time counts before this one leaves
                yield piece
                self._deadline.advance(len(piece))

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


class _WatchedStream(httpx_module().SyncByteStream):  # type: ignore[misc]
    """A response body whose chunks are counted against the deadline."""

    def __init__(self, inner, deadline: _Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._deadline.advance(len(chunk))
            yield chunk

    def close(self) -> None:
        self._inner.close()
