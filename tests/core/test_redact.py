"""Secrets never reach a log line or a message, third-party debug logs included."""

from __future__ import annotations

import io
import logging

import pytest

from ptq_core.redact import RedactingFilter, install_redaction, redact

TOKEN = "hf_" + "A1b2C3d4" * 4 + "xy"  # shaped like a real user token
ODD_TOKEN = "opaque-secret-7f3e9a"  # a token that does not look like one


@pytest.mark.parametrize("text,expected", [
    ("token hf_test_alice leaked", "token hf_test_alice leaked"),  # too short to be a token
    (f"x {TOKEN} y", "x hf_*** y"),
    ("oauth hf_oauth_" + "z" * 30, "oauth hf_***"),
    ("org api_org_" + "Q" * 30, "org api_org_***"),
    ("Authorization: Bearer abc.def", "Authorization: Bearer ***"),
    ("{'Authorization': 'Bearer abc.def', 'host': 'x'}", "{'Authorization': 'Bearer ***', 'host': 'x'}"),
    ("[(b'authorization', b'Basic dXNlcjpwYXNz'), (b'host', b'hub')]",
     "[(b'authorization', b'Basic ***'), (b'host', b'hub')]"),
    ('"authorization": "' + ODD_TOKEN + '"', '"authorization": "***"'),
    ("authorization=xyz123&next=1", "authorization=***&next=1"),
    ("curl -H 'bearer tok-123' url", "curl -H 'bearer ***' url"),
    ("https://user:" + ODD_TOKEN + "@hub.example/x", "https://user:***@hub.example/x"),
    ("authorization failed for this repo", "authorization failed for this repo"),
])
def test_redact(text, expected):
    assert redact(text) == expected


def test_redact_known_token_anywhere():
    assert redact(f"id={ODD_TOKEN};", ODD_TOKEN) == "id=***;"
    assert redact("token hf_test_alice leaked", "hf_test_alice") == "token *** leaked"
    assert redact("abc", "a") == "abc"  # a one-letter "token" is not a secret worth shredding text for


@pytest.fixture
def logs():
    """A root handler writing to a buffer; logging restored afterwards."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    factory, level = logging.getLogRecordFactory(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    holders = [handler, logging.lastResort, *(logging.getLogger(n) for n in ("httpx", "httpcore", "urllib3"))]
    hf_logger = logging.getLogger("huggingface_hub")
    holders += [hf_logger, *hf_logger.handlers]
    yield buffer
    root.removeHandler(handler)
    root.setLevel(level)
    logging.setLogRecordFactory(factory)
    for holder in holders:
        for f in [f for f in holder.filters if isinstance(f, RedactingFilter)]:
            holder.removeFilter(f)


def test_httpcore_response_headers_trace(logs):
    """httpcore's trace line for response headers, where a server echoed the Authorization header."""
    install_redaction(lambda: ODD_TOKEN)
    trace = logging.getLogger("httpcore.http11")  # a child: the "httpcore" logger's own filters never see it
    trace.debug("receive_response_headers.complete return_value=(b'HTTP/1.1', 200, b'OK', [(b'Content-Type', "
                f"b'application/json'), (b'Authorization', b'Bearer {TOKEN}'), (b'X-Echo', b'{ODD_TOKEN}')])")
    trace.debug("send_request_headers.started request=%r", [(b"authorization", f"Bearer {ODD_TOKEN}".encode())])
    logging.getLogger("urllib3.connectionpool").debug("%s %s", "GET", f"https://hub/api?token={TOKEN}")
    out = logs.getvalue()
    assert TOKEN not in out and ODD_TOKEN not in out
    assert "(b'Authorization', b'Bearer ***'), (b'X-Echo', b'***')" in out
    assert "[(b'authorization', b'Bearer ***')]" in out
    assert "GET https://hub/api?token=hf_***" in out


def test_tracebacks_and_loggers_created_later(logs):
    install_redaction()
    late = logging.getLogger("some.library.created.after.install")
    late.propagate = False
    buffer = io.StringIO()
    late.addHandler(logging.StreamHandler(buffer))  # a handler the install never saw
    late.warning("Authorization: %s", f"Bearer {TOKEN}")
    try:
        raise RuntimeError(f"server said {TOKEN}")
    except RuntimeError:
        logging.getLogger("ptq_core.hub").exception("upload failed")
    assert TOKEN not in buffer.getvalue() and "Authorization: Bearer ***" in buffer.getvalue()
    assert TOKEN not in logs.getvalue() and "RuntimeError: server said hf_***" in logs.getvalue()


def test_huggingface_hub_own_handler_is_filtered(logs):
    import huggingface_hub.utils.logging  # noqa: F401 - adds the library's own StreamHandler

    hf_logger = logging.getLogger("huggingface_hub")
    installed = install_redaction()
    assert hf_logger.handlers and all(installed in handler.filters for handler in hf_logger.handlers)
    assert installed in hf_logger.filters and installed in logging.lastResort.filters
    again = install_redaction()
    assert installed not in hf_logger.filters and again in hf_logger.filters


def test_bad_format_string_keeps_the_line():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "value %d", (TOKEN,), None)
    assert RedactingFilter().filter(record) is True
    assert record.getMessage() == "value %d ('hf_***',)"
