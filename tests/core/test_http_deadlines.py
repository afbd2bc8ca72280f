"""http_deadlines: huggingface_hub's shared client gets timeouts and a throughput floor.

The floor is checked on ``_Deadline`` alone (its window moved back instead of waiting), the
request hook on a client request, and the whole on a tiny local ``http.server`` that
trickles a body through the client's own session: it is cut off within the window, not
when the server gives up.
"""

from __future__ import annotations

import http.server
import threading
import time

import pytest
from huggingface_hub import get_session

from ptq_core import constants, http_deadlines
from ptq_core.errors import TransferStalledError
from ptq_core.http_errors import httpx_module, is_stall


def _elapse(deadline: http_deadlines._Deadline) -> None:
    deadline._mark -= deadline.window + 0.01  # as if a whole window had passed


def test_a_window_under_the_floor_is_a_stall_naming_what_and_how_much():
    deadline = http_deadlines._Deadline("download from https://hub/f", None)
    deadline.advance(10)
    _elapse(deadline)
    with pytest.raises(TransferStalledError, match=r"download from https://hub/f stalled: 10 bytes in the last .* "
                                                   rf"floor of {deadline.floor} bytes per"):
        deadline.advance(0)


def test_a_window_over_the_floor_starts_the_next_window():
    deadline = http_deadlines._Deadline("x", None)
    deadline.advance(deadline.floor)
    _elapse(deadline)
    deadline.advance(0)
    assert deadline._mark_moved == deadline.floor
    deadline.advance(1)  # within the new window: nothing is measured yet


def test_a_short_remainder_needs_only_its_own_bytes():
    deadline = http_deadlines._Deadline("x", total=100)
    deadline.advance(60)
    _elapse(deadline)
    deadline.advance(40)  # 100 of 100: under the floor, but the transfer is complete


def test_the_request_hook_sets_missing_timeouts_and_watches_bodies(monkeypatch):
    monkeypatch.setattr(constants, "HTTP_CONNECT_TIMEOUT", 3.0)
    monkeypatch.setattr(constants, "HTTP_READ_TIMEOUT", 7.0)
    httpx = httpx_module()
    plain = httpx.Request("GET", "https://hub/x?sig=secret")
    http_deadlines._apply_deadlines(plain)
    assert plain.extensions["timeout"] == {"connect": 3.0, "read": 7.0, "write": 7.0, "pool": None}
    assert not isinstance(plain.stream, http_deadlines._WatchedBody)
    upload = httpx.Request("PUT", "https://hub/up?sig=secret", content=b"x" * 100,
                           extensions={"timeout": {"connect": 1.0, "read": None, "write": None, "pool": None}})
    http_deadlines._apply_deadlines(upload)
    assert upload.extensions["timeout"]["connect"] == 1.0  # the caller's own timeout stays
    assert isinstance(upload.stream, http_deadlines._WatchedBody)
    assert upload.stream._deadline.what == "upload to https://hub/up" and upload.stream._deadline.total == 100
    assert b"".join(upload.stream) == b"x" * 100


class _Trickle(http.server.BaseHTTPRequestHandler):
    """Promises a megabyte, then sends 100 bytes every 0.05 s for at most 3 s."""

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 20))
        self.end_headers()
        end = time.monotonic() + 3.0
        try:
            while time.monotonic() < end:
                self.wfile.write(b"y" * 100)
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass  # the client hung up: what the test wants

    def log_message(self, *args):
        pass


@pytest.fixture
def trickle_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/file"
    server.shutdown()
    server.server_close()


def test_the_shared_client_cuts_a_trickling_download_within_the_window(trickle_url, monkeypatch):
    monkeypatch.setattr(constants, "STALL_WINDOW", 0.3)
    monkeypatch.setattr(constants, "STALL_MIN_BYTES", 64 * 1024)
    http_deadlines.install_transfer_deadlines()
    http_deadlines.install_transfer_deadlines()  # idempotent
    began = time.monotonic()
    with pytest.raises(Exception) as info:
        with get_session().stream("GET", trickle_url) as response:
            for _ in response.iter_bytes():
                pass
    assert is_stall(info.value), repr(info.value)
    assert time.monotonic() - began < 2.0, "the trickle was only noticed when the server stopped"
