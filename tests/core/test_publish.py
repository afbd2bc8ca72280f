"""publish: the token's identity, namespace rights, the target's state, creating and undoing it.

The pure rules (``check_namespace``, ``refuse_existing_content``, ``new_content``) are checked on
values; the calls on the loopback Hub server through the real client (``hub`` fixture).
"""

from __future__ import annotations

import logging

import pytest

from ptq_core._http import HubHttp
from ptq_core.errors import HubPermissionError, TargetRepoExistsError, TokenError
from ptq_core.publish import (
    TargetState,
    check_namespace,
    create_target,
    delete_created,
    inspect_target,
    new_content,
    refuse_existing_content,
    whoami,
)

ALICE, READ_ONLY = "hf_test_alice", "hf_test_readonly"


class _Http:
    endpoint = "https://hub.test"


def _identity(role="write", orgs=()):
    return {"name": "alice", "orgs": [{"name": n, "roleInOrg": r} for n, r in orgs],
            "auth": {"accessToken": {"role": role}}}


def test_namespace_rights_from_the_identity_alone():
    check_namespace(_Http(), "alice/M-FP8", _identity())
    check_namespace(_Http(), "org/M-FP8", _identity(orgs=[("org", "write")]))
    with pytest.raises(HubPermissionError, match="is read-only"):
        check_namespace(_Http(), "alice/M-FP8", _identity(role="read"))
    with pytest.raises(HubPermissionError, match="not a member of 'other'"):
        check_namespace(_Http(), "other/M-FP8", _identity(orgs=[("org", "write")]))
    with pytest.raises(HubPermissionError, match="has the read role in 'org'"):
        check_namespace(_Http(), "org/M-FP8", _identity(orgs=[("org", "read")]))


def test_a_target_with_files_is_refused_and_gitattributes_alone_is_empty():
    refuse_existing_content(TargetState(True, (".gitattributes",)), "a/b")
    many = tuple(f"f{i}" for i in range(7))
    with pytest.raises(TargetRepoExistsError, match=r"already holds 7 file\(s\) \(f0, f1, f2, f3, f4, \.\.\.\)"):
        refuse_existing_content(TargetState(True, many), "a/b")


def test_new_content_is_what_appeared_since_the_verified_state():
    verified = TargetState(True, ("a", ".gitattributes"), head="1")
    assert new_content(TargetState(True, ("a", "b", ".gitattributes", "c"), head="2"), verified) == ["b", "c"]


def test_whoami_remembers_the_user_and_refuses_a_bad_token(hub):
    http = HubHttp(ALICE)
    assert whoami(http)["name"] == "alice" and http.user == "alice"
    with pytest.raises(TokenError, match="rejected the token"):
        whoami(HubHttp("hf_test_nobody"))


def test_inspect_create_and_undo_a_target(hub, caplog):
    http = HubHttp(ALICE)
    assert inspect_target(http, "alice/new") == TargetState(exists=False, files=())
    assert create_target(http, "alice/new", private=True) is True
    assert create_target(http, "alice/new", private=True) is False  # made meanwhile: not ours
    state = inspect_target(http, "alice/new")
    assert state.exists and state.head == state.branches["main"] and state.files == (".gitattributes",)
    hub.seed_repo("alice/full", {"config.json": b"{}"})
    full = inspect_target(http, "alice/full")
    assert full.files == ("config.json",) and full.head == hub.commits("alice/full")[-1]["oid"]  # oldest first
    with caplog.at_level(logging.WARNING, logger="ptq_core.publish"):
        delete_created(http, "alice/new")
    assert not hub.repo_exists("alice/new") and "Deleted alice/new again" in caplog.text


def test_undo_never_raises_and_never_shows_the_token(hub, caplog):
    http = HubHttp(READ_ONLY)
    hub.seed_repo("alice/kept", {"config.json": b"{}"})
    with caplog.at_level(logging.ERROR, logger="ptq_core.publish"):
        delete_created(http, "alice/kept")
    assert hub.repo_exists("alice/kept")
    assert "Could not delete the half-made repo alice/kept" in caplog.text and READ_ONLY not in caplog.text
