"""http_errors: what a failed Hub request means, read from the whole cause chain, with no request made."""

from __future__ import annotations

import email.utils
from types import SimpleNamespace

import pytest

from ptq_core.errors import HubError, TransferStalledError
from ptq_core.http_errors import (
    causes,
    httpx_module,
    is_rate_limited,
    is_stall,
    is_transient,
    rate_limit_asked,
    rate_limit_wait,
    short,
    status_of,
    transient_reason,
)


class Answered(Exception):
    """A client error carrying an HTTP answer, as huggingface_hub's HfHubHTTPError does."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} Client Error\n\nfor url: https://hub/x")
        self.response = SimpleNamespace(status_code=status, headers=headers or {})


def wrapped(inner: BaseException, outer: BaseException | None = None) -> BaseException:
    outer = outer or HubError("wrapped")
    outer.__cause__ = inner
    return outer


def test_status_and_short_message():
    assert status_of(Answered(503)) == 503 and status_of(ValueError("x")) is None
    assert short(Answered(404)) == "404 Client Error"
    assert short(ValueError("")) == "ValueError" and len(short(ValueError("y" * 500))) == 300


def test_causes_walks_cause_then_context_once_even_in_a_cycle():
    a, b = ValueError("a"), KeyError("b")
    a.__cause__, b.__context__ = b, a
    assert list(causes(a)) == [a, b]


@pytest.mark.parametrize("err,transient", [
    (Answered(503), True), (Answered(500), True), (Answered(599), True), (Answered(429), True), (Answered(408), True),
    (Answered(404), False), (Answered(401), False), (Answered(412), False),
    (ConnectionResetError(), True), (TimeoutError(), True), (ValueError("no"), False),
    (wrapped(Answered(502)), True), (wrapped(Answered(403)), False),
])
def test_transient_failures_are_found_anywhere_in_the_chain(err, transient):
    assert is_transient(err) is transient


def test_transport_errors_of_the_client_are_transient_and_timeouts_are_stalls():
    httpx = httpx_module()
    assert is_transient(httpx.ConnectError("refused"))
    assert is_stall(wrapped(httpx.ReadTimeout("timed out"))) and is_stall(TransferStalledError("slow"))
    assert not is_stall(httpx.ConnectError("refused")) and not is_stall(Answered(503))


def test_transient_reason_names_the_root_cause():
    assert transient_reason(wrapped(Answered(503))) == "HTTP 503"
    assert transient_reason(wrapped(ConnectionResetError("reset by peer"))) == "ConnectionResetError: reset by peer"
    stalled = wrapped(TransferStalledError("download from x stalled at byte 7"))
    stalled.__cause__.__cause__ = TimeoutError("timed out")
    assert transient_reason(stalled) == "download from x stalled at byte 7"


def test_a_429_says_how_long_to_wait_through_any_wrapper():
    limited = wrapped(Answered(429, {"Retry-After": "12"}))
    assert is_rate_limited(limited) and rate_limit_asked(limited) == 12
    assert not is_rate_limited(Answered(503)) and rate_limit_asked(Answered(503, {"Retry-After": "5"})) is None
    assert rate_limit_asked(Answered(429)) is None  # no header: the caller's own schedule


def test_rate_limit_wait_reads_ratelimit_and_retry_after():
    assert rate_limit_wait({"RateLimit": '"api";r=0;t=55'}) == 55
    assert rate_limit_wait({"ratelimit": '"api";r=0;t=5, "resolvers";r=10;t=300'}) == 5  # not exhausted
    assert rate_limit_wait({"ratelimit": '"api";r=0;t=5, "resolvers";r=0;t=300'}) == 300
    assert rate_limit_wait({"RateLimit": '"api";r=0;t=5', "Retry-After": "9"}) == 9
    assert rate_limit_wait({"Retry-After": "7"}) == 7
    assert rate_limit_wait({"Retry-After": "Wed, 21 Oct 2026 07:28:30 GMT"},
                           now=email.utils.parsedate_to_datetime("Wed, 21 Oct 2026 07:28:00 GMT").timestamp()) == 30
    assert rate_limit_wait({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0  # in the past: now
    assert rate_limit_wait({"Retry-After": "soon"}) is None
    assert rate_limit_wait({"Content-Type": "application/json"}) is None
