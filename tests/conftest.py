"""Shared pytest fixtures."""

from __future__ import annotations

import pytest

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
