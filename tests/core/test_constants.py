"""constants: every environment variable read once, with its default; the one boolean parser."""

from __future__ import annotations

import importlib

import pytest

from ptq_core import constants
from ptq_core.errors import InvalidOptionError


@pytest.mark.parametrize("text,value", [("true", True), ("TRUE", True), (" yes ", True), ("1", True), ("on", True),
                                        ("false", False), ("No", False), ("0", False), ("off", False)])
def test_parse_bool(text, value):
    assert constants.parse_bool(text) is value


def test_parse_bool_defaults_and_strictness():
    assert constants.parse_bool(None, default=True) is True and constants.parse_bool("", default=True) is True
    assert constants.parse_bool(False, default=True) is False
    assert constants.parse_bool("true", strict=True) is True
    with pytest.raises(InvalidOptionError, match="private is 'yes'; write true or false"):
        constants.parse_bool("yes", name="private", strict=True)
    with pytest.raises(InvalidOptionError, match="write true or false"):
        constants.parse_bool("ture")


def test_the_token_is_read_at_call_time(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    assert constants.hf_token_from_env() is None
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_old")
    assert constants.hf_token_from_env() == "hf_old"
    monkeypatch.setenv("HF_TOKEN", "hf_new")
    assert constants.hf_token_from_env() == "hf_new"


def test_environment_values_replace_defaults_and_bad_ones_are_ignored(monkeypatch):
    monkeypatch.setenv("PTQ_HTTP_READ_TIMEOUT", "5")
    monkeypatch.setenv("PTQ_STALL_WINDOW", "-3")  # not a positive number: the default
    monkeypatch.setenv("PTQ_RATE_LIMIT_MAX_WAIT", "soon")
    monkeypatch.setenv("PTQ_DISABLE_PROGRESS", "maybe")
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example/")
    try:
        fresh = importlib.reload(constants)
        assert fresh.HTTP_READ_TIMEOUT == 5.0 and fresh.STALL_WINDOW == 60.0 and fresh.RATE_LIMIT_MAX_WAIT == 300.0
        assert fresh.PTQ_DISABLE_PROGRESS is False and fresh.HF_ENDPOINT == "https://hub.example"
    finally:
        monkeypatch.undo()
        importlib.reload(constants)
