"""hubjob.preview: the default target repo and model search, through the real client on the loopback Hub.

Plans of Hub models (``plan_hub_model``, ``plan_hub_parts``): tests/test_hub.py, tests/core/test_job_plan.py.
"""

from __future__ import annotations

import pytest

from ptq_core.errors import InvalidOptionError, SchemeNotSupportedError, TokenError
from ptq_core.hubjob.preview import default_target_repo, search_models

ALICE = "hf_test_alice"


def test_the_default_target_is_under_the_token_s_user_unless_a_namespace_is_given(hub):
    assert default_target_repo("meta-llama/Llama-3.2-1B", "fp8_block", token=ALICE) == "alice/Llama-3.2-1B-FP8-BLOCK"
    assert default_target_repo("org/M", "W4A16", namespace="ptq-org") == "ptq-org/M-W4A16"
    with pytest.raises(TokenError):
        default_target_repo("org/M", "W4A16")
    with pytest.raises(SchemeNotSupportedError):
        default_target_repo("org/M", "FP9", namespace="me")
    with pytest.raises(InvalidOptionError, match="needs its namespace"):
        default_target_repo("M", "W4A16", namespace="me")


def test_search_finds_the_models_the_token_can_see(hub):
    hub.seed_repo("org/tiny-llama", {"config.json": b"{}"})
    hub.seed_repo("org/other", {"config.json": b"{}"})
    hub.seed_repo("bob/tiny-secret", {"config.json": b"{}"}, private=True)
    assert search_models("TINY", token=ALICE) == ["org/tiny-llama"]
    assert search_models("tiny", token="hf_test_bob") == ["bob/tiny-secret", "org/tiny-llama"]
    assert search_models("tiny", limit=1, token="hf_test_bob") == ["bob/tiny-secret"]
