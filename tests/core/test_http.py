"""The one HTTP layer under stress: transfer deadlines (stall, trickle) and rate limits (issue 19).

Every test drives the real huggingface_hub client against the loopback Hub server,
whose network chaos (``HubServer.inject_network_fault``) stalls, trickles or answers
429. The deadlines are shrunk to fractions of a second and every fault holds its
connection for at most a few seconds, so a client that does not notice a stall
shows up as a test that takes longer than the bound it asserts, never as a hang.

At the end, ``HubHttp.call`` itself without a server: retries, typed errors by status and
role, per-call ``translate``/``passthrough``, the 429 cap, the token and repo id checks.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import time
from types import SimpleNamespace

import pytest
from hub_server import LFS_UPLOAD_PATH
from huggingface_hub import CommitOperationAdd

from ptq_core import _http as hub_http
from ptq_core import constants
from ptq_core.errors import (
    HubError,
    HubNetworkError,
    HubPermissionError,
    HubRateLimitError,
    InvalidOptionError,
    RepoNotFoundError,
    StagingError,
    TokenError,
    TransferStalledError,
)
from ptq_core.remote import fetch_range
from ptq_core.source import SourceState

ALICE = "hf_test_alice"
SOURCE = "bob/blob"
FILE = "data.bin"
DATA = os.urandom(300_000)
HOLD = 4.0  # how long a faulty answer holds its connection: what a client that never notices would wait


@pytest.fixture(autouse=True)
def _short_deadlines(monkeypatch):
    monkeypatch.setattr(hub_http, "_RETRY_DELAYS", (0.0, 0.0, 0.0))
    monkeypatch.setattr(constants, "HTTP_READ_TIMEOUT", 0.5)
    monkeypatch.setattr(constants, "STALL_WINDOW", 0.5)
    monkeypatch.setattr(constants, "STALL_MIN_BYTES", 64 * 1024)


def _source(hub) -> SourceState:
    hub.seed_repo(SOURCE, {FILE: DATA})
    sha = hub.commits(SOURCE)[-1]["oid"]
    return SourceState(SOURCE, None, sha, {FILE: len(DATA)}, {})


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _ranges(hub) -> list[str]:
    return [headers.get("range") for method, path, headers in hub.requests_log if method == "GET" and FILE in path]


# --- downloads -------------------------------------------------------------------------
def test_a_download_stalled_after_its_headers_is_retried(hub):
    state = _source(hub)
    http = hub_http.HubHttp(ALICE)
    hub.inject_network_fault(FILE, "stall", method="GET", hold=HOLD)
    got = bytearray()
    began = time.monotonic()
    fetch_range(http, state, FILE, 1000, 200_000, got.extend)
    elapsed = time.monotonic() - began
    assert bytes(got) == DATA[1000:201_000]
    assert elapsed < HOLD - 1, f"the stall was only noticed when the server gave up ({elapsed:.1f} s)"
    assert _ranges(hub) == ["bytes=1000-200999"] * 2
    assert len(hub.net_fault_log) == 1


def test_a_trickling_download_is_a_stall_and_resumes_at_its_byte(hub):
    state = _source(hub)
    http = hub_http.HubHttp(ALICE)
    hub.inject_network_fault(FILE, "trickle", method="GET", hold=HOLD, trickle_bytes=100, trickle_every=0.1)
    got = bytearray()
    began = time.monotonic()
    fetch_range(http, state, FILE, 1000, 200_000, got.extend)
    elapsed = time.monotonic() - began
    assert bytes(got) == DATA[1000:201_000]
    assert elapsed < HOLD - 1, f"the trickle was only noticed when the server gave up ({elapsed:.1f} s)"
    first, second = _ranges(hub)
    resumed_at = int(second.split("=")[1].split("-")[0])
    assert first == "bytes=1000-200999"
    assert 1000 < resumed_at < 1000 + 2_000  # a few trickled 100-byte pieces were kept, not fetched again
    assert second == f"bytes={resumed_at}-200999"


def test_a_download_that_keeps_stalling_fails_typed_naming_file_byte_and_fix(hub):
    state = _source(hub)
    http = hub_http.HubHttp(ALICE)
    hub.inject_network_fault(FILE, "stall", method="GET", times=4, hold=HOLD)
    began = time.monotonic()
    with pytest.raises(TransferStalledError, match=r"Could not download data.bin \(bob/blob\) .* the transfer stalled "
                                                   r"\(.*data.bin stalled at byte 1000 .*Gave up after 4 attempts.*"
                                                   r"PTQ_STALL_WINDOW.*PTQ_HTTP_READ_TIMEOUT.*rerun the job") as excinfo:
        fetch_range(http, state, FILE, 1000, 200_000, bytearray().extend)
    assert isinstance(excinfo.value, HubNetworkError)
    assert time.monotonic() - began < HOLD
    assert len(hub.net_fault_log) == 4


# --- uploads ---------------------------------------------------------------------------
def _preupload(hub, data: bytes) -> None:
    http = hub_http.HubHttp(ALICE)
    http.api.create_repo("alice/up")
    hub.configure(lfs_threshold=1024)
    op = CommitOperationAdd(path_in_repo="w.bin", path_or_fileobj=data)
    # the call ShardStager.upload makes for every output shard
    http.call("upload w.bin to", http.api.preupload_lfs_files, "alice/up", [op], role="target", repo_id="alice/up")


def test_an_lfs_upload_whose_answer_stalls_is_retried(hub):
    hub.inject_network_fault(LFS_UPLOAD_PATH, "stall", method="PUT", hold=HOLD)
    began = time.monotonic()
    _preupload(hub, DATA)
    elapsed = time.monotonic() - began
    assert elapsed < HOLD - 0.5, f"the stalled upload was only noticed when the server gave up ({elapsed:.1f} s)"
    assert hub.lfs_objects("alice/up") == {_sha256(DATA): len(DATA)}
    assert hub.stats.lfs_puts >= 2


def test_an_lfs_upload_the_server_reads_slowly_is_a_stall(hub):
    data = os.urandom(24 << 20)  # more than the loopback socket buffers hold, so the client must wait on the reader
    hub.inject_network_fault(LFS_UPLOAD_PATH, "slow_read", method="PUT", hold=HOLD, trickle_bytes=100,
                             trickle_every=0.1)
    began = time.monotonic()
    _preupload(hub, data)
    elapsed = time.monotonic() - began
    assert elapsed < HOLD - 0.5, f"the slow reader was only noticed when the server gave up ({elapsed:.1f} s)"
    assert hub.lfs_objects("alice/up") == {_sha256(data): len(data)}


# --- rate limits -----------------------------------------------------------------------
@pytest.mark.parametrize("asked", ["retry-after-seconds", "retry-after-date", "ratelimit"])
def test_a_429_waits_what_the_server_asks(hub, monkeypatch, asked):
    monkeypatch.setattr(hub_http, "_RETRY_DELAYS", (0.05, 0.05, 0.05))  # our own schedule alone gives up at once
    hub.seed_repo(SOURCE, {FILE: b"x"})
    wait = {"retry-after-seconds": {"retry_after": "1"},
            "retry-after-date": {"retry_after": email.utils.formatdate(time.time() + 2, usegmt=True)},
            "ratelimit": {"ratelimit": '"api";r=0;t=1'}}[asked]
    hub.inject_network_fault(f"/api/models/{SOURCE}", "rate_limit", window=0.9, **wait)
    http = hub_http.HubHttp(ALICE)
    began = time.monotonic()
    info = http.call("read", http.api.model_info, SOURCE, role="source", repo_id=SOURCE)
    elapsed = time.monotonic() - began
    assert info.id == SOURCE
    assert len(hub.net_fault_log) == 1  # one 429, then one wait long enough
    assert 0.9 <= elapsed < 3.5


def test_a_429_asking_more_than_the_cap_fails_at_once_and_says_so(hub, monkeypatch, caplog):
    monkeypatch.setattr(constants, "RATE_LIMIT_MAX_WAIT", 5.0)
    hub.seed_repo(SOURCE, {FILE: b"x"})
    hub.inject_network_fault(f"/api/models/{SOURCE}", "rate_limit", times=10, ratelimit='"api";r=0;t=120')
    http = hub_http.HubHttp(ALICE)
    began = time.monotonic()
    with pytest.raises(HubRateLimitError, match=r"Could not read \(bob/blob\) .*\(HTTP 429\) and asks to wait 120 s, more "
                                                r"than the 5 s this job waits \(PTQ_RATE_LIMIT_MAX_WAIT\)\. Rerun"):
        http.call("read", http.api.model_info, SOURCE, role="source", repo_id=SOURCE)
    assert time.monotonic() - began < 1
    assert len(hub.net_fault_log) == 1
    assert ALICE not in caplog.text


def test_a_429_without_a_wait_still_gives_up_typed(hub):
    hub.seed_repo(SOURCE, {FILE: b"x"})
    hub.inject_network_fault(f"/api/models/{SOURCE}", "rate_limit", times=10)
    http = hub_http.HubHttp(ALICE)
    with pytest.raises(HubRateLimitError, match=r"kept answering HTTP 429 \(rate limited\) after 4 attempts"):
        http.call("read", http.api.model_info, SOURCE, role="source", repo_id=SOURCE)
    assert len(hub.net_fault_log) == 4


# --- HubHttp.call and the token, without a server ---------------------------------------
class _Answered(Exception):
    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} Client Error: token {ALICE} rejected")
        self.response = SimpleNamespace(status_code=status, headers=headers or {})


def _flaky(*failures: BaseException):
    """A call that raises ``failures`` in turn, then answers "ok"; ``calls`` counts the attempts."""
    queue = list(failures)

    def call():
        call.calls += 1
        if queue:
            raise queue.pop(0)
        return "ok"

    call.calls = 0
    return call


def test_transient_failures_are_retried_then_the_answer_returned():
    call = _flaky(_Answered(503), ConnectionResetError("reset"))
    assert hub_http.HubHttp(ALICE).call("read x", call, role="source", repo_id="a/b") == "ok" and call.calls == 3


def test_after_the_last_attempt_the_error_is_typed_and_the_token_redacted():
    call = _flaky(*[_Answered(503)] * 4)
    with pytest.raises(HubNetworkError, match=r"Could not read x \(a/b\) on .*: HTTP 503. Gave up after 4 attempts") as info:
        hub_http.HubHttp(ALICE).call("read x", call, role="source", repo_id="a/b")
    assert call.calls == 4 and ALICE not in str(info.value)


def test_a_request_that_must_not_be_sent_twice_gets_one_attempt():
    call = _flaky(_Answered(502))
    with pytest.raises(HubNetworkError, match="Gave up after 1 attempts"):
        hub_http.HubHttp(ALICE).call("commit", call, role="target", repo_id="a/b", retry=False)
    assert call.calls == 1


@pytest.mark.parametrize("status,role,error", [
    (401, "source", TokenError), (403, "target", HubPermissionError), (404, "source", RepoNotFoundError),
    (403, "source", RepoNotFoundError), (400, "source", HubError),
])
def test_client_errors_map_by_status_and_role_at_once(status, role, error):
    call = _flaky(_Answered(status))
    with pytest.raises(error) as info:
        hub_http.HubHttp(ALICE).call("read x", call, role=role, repo_id="a/b")
    assert call.calls == 1 and ALICE not in str(info.value)


def test_per_call_translate_and_passthrough():
    http = hub_http.HubHttp(ALICE)
    with pytest.raises(StagingError, match="mine"):
        http.call("x", _flaky(_Answered(409)), role="target", repo_id="a/b", translate=lambda err: StagingError("mine"))
    with pytest.raises(_Answered):
        http.call("x", _flaky(_Answered(404)), role="source", repo_id="a/b", passthrough=lambda err: True)


def test_a_429_asking_more_than_the_cap_fails_without_waiting(monkeypatch):
    monkeypatch.setattr(constants, "RATE_LIMIT_MAX_WAIT", 5.0)
    call = _flaky(_Answered(429, {"Retry-After": "600"}))
    began = time.monotonic()
    with pytest.raises(HubRateLimitError, match="asks to wait 600 s, more than the 5 s"):
        hub_http.HubHttp(ALICE).call("x", call, role="source", repo_id="a/b")
    assert call.calls == 1 and time.monotonic() - began < 1


def test_resolve_token_argument_then_environment(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert hub_http.resolve_token("  hf_given ", required=True) == "hf_given"
    assert hub_http.resolve_token(None, required=True) == "hf_from_env"
    with pytest.raises(TokenError, match="token must be a string"):
        hub_http.resolve_token(123, required=False)


def test_check_repo_id():
    hub_http.check_repo_id("org/Model-1.5", "source")
    with pytest.raises(InvalidOptionError, match="needs its namespace"):
        hub_http.check_repo_id("Model", "source")
    hub_http.check_repo_id("Model", "target")  # a bare target goes under the user
    with pytest.raises(InvalidOptionError, match="not a valid target repo id"):
        hub_http.check_repo_id("org/bad name", "target")
