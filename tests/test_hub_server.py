"""The loopback Hub server speaks what the real huggingface_hub client expects.

Every test drives the installed client over real HTTP (no patching of the client);
the ``hub`` fixture (tests/conftest.py) gives an empty server per test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.torch import save_file

ALICE, BOB, CAROL = "hf_test_alice", "hf_test_bob", "hf_test_readonly"

README = """---
license: apache-2.0
library_name: transformers
base_model: org/base
base_model_relation: quantized
tags:
- compressed-tensors
---
# tiny
"""


def _api(hub, token=ALICE) -> HfApi:
    return HfApi(endpoint=hub.endpoint, token=token)


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    tensors = {"model.layers.0.mlp.up_proj.weight": torch.randn(512, 512, generator=torch.Generator().manual_seed(0))}
    save_file(tensors, str(path), metadata={"format": "pt"})  # 512*512*4 bytes: ~1 MiB
    return tensors


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "model"
    (root / "extra").mkdir(parents=True)
    (root / "README.md").write_text(README)
    (root / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    (root / "extra" / "notes.txt").write_text("notes")
    _safetensors(root / "model.safetensors")
    return root


def test_whoami_reports_user_orgs_and_role(hub):
    alice = _api(hub).whoami()
    assert alice["name"] == "alice" and alice["type"] == "user"
    assert [org["name"] for org in alice["orgs"]] == ["ptq-org"]
    assert alice["auth"]["accessToken"]["role"] == "write"
    assert _api(hub, CAROL).whoami()["auth"]["accessToken"]["role"] == "read"

    with pytest.raises(HfHubHTTPError, match="Invalid user token") as err:
        _api(hub, "hf_test_nobody").whoami()
    assert err.value.response.status_code == 401


def test_create_repo_private_public_and_exist_ok(hub):
    api = _api(hub)
    assert api.create_repo("alice/public") == f"{hub.endpoint}/alice/public"
    api.create_repo("tiny-private", private=True)  # no namespace: the token's user
    assert api.model_info("alice/public").private is False
    assert api.model_info("alice/tiny-private").private is True
    # A new repo holds the Hub's .gitattributes, as on huggingface.co.
    assert hub.list_files("alice/public") == [".gitattributes"]

    assert api.create_repo("alice/public", exist_ok=True) == f"{hub.endpoint}/alice/public"
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("alice/public")
    assert err.value.response.status_code == 409

    api.create_repo("ptq-org/shared")  # alice is a member of ptq-org
    assert hub.repo_exists("ptq-org/shared")


def test_upload_list_info_download_roundtrip(hub, folder, tmp_path):
    api = _api(hub)
    api.create_repo("alice/tiny", private=True)
    commit = api.upload_folder(repo_id="alice/tiny", folder_path=folder, commit_message="Add tiny model")

    expected = [".gitattributes", "README.md", "config.json", "extra/notes.txt", "model.safetensors"]
    assert api.list_repo_files("alice/tiny") == expected
    assert hub.list_files("alice/tiny") == expected
    last = hub.commits("alice/tiny")[-1]
    assert (last["oid"], last["message"]) == (commit.oid, "Add tiny model")
    assert last["files"] == ["README.md", "config.json", "extra/notes.txt", "model.safetensors"]
    assert hub.read_file("alice/tiny", "model.safetensors") == (folder / "model.safetensors").read_bytes()

    info = api.model_info("alice/tiny", files_metadata=True)
    assert info.private is True and info.sha == commit.oid
    assert info.card_data.base_model == "org/base" and info.card_data.license == "apache-2.0"
    siblings = {s.rfilename: s for s in info.siblings}
    weights = siblings["model.safetensors"]
    assert weights.size == (folder / "model.safetensors").stat().st_size
    assert weights.lfs is not None and weights.lfs.size == weights.size
    assert siblings["config.json"].lfs is None
    assert info.safetensors.total == 512 * 512

    top = {entry.path: type(entry).__name__ for entry in api.list_repo_tree("alice/tiny")}
    assert top["extra"] == "RepoFolder" and "extra/notes.txt" not in top
    infos = {f.path: f for f in api.get_paths_info("alice/tiny", ["config.json", "extra", "missing.txt"])}
    assert set(infos) == {"config.json", "extra"}  # missing paths are left out, as on the Hub
    assert infos["config.json"].size == (folder / "config.json").stat().st_size

    snap = Path(
        snapshot_download(
            "alice/tiny", endpoint=hub.endpoint, token=ALICE, cache_dir=tmp_path / "c1", allow_patterns=["*.json"]
        )
    )
    assert sorted(p.name for p in snap.iterdir()) == ["config.json"]
    assert snap.name == commit.oid  # the client pins the commit it read from model_info

    weights_path = hf_hub_download(
        "alice/tiny", "model.safetensors", endpoint=hub.endpoint, token=ALICE, cache_dir=tmp_path / "c2"
    )
    assert Path(weights_path).read_bytes() == (folder / "model.safetensors").read_bytes()

    hub.requests_log.clear()
    meta = api.get_safetensors_metadata("alice/tiny")
    tensor = meta.files_metadata["model.safetensors"].tensors["model.layers.0.mlp.up_proj.weight"]
    assert (tensor.dtype, tensor.shape) == ("F32", [512, 512])
    ranged = [h["range"] for method, path, h in hub.requests_log if method == "GET" and "range" in h]
    assert ranged == ["bytes=0-100000"]  # the header was read with a Range request, not the whole file
    # The token went with every request (and only as a bearer header).
    assert all(h.get("authorization") == f"Bearer {ALICE}" for _, _, h in hub.requests_log)
    assert not any(ALICE in path for _, path, _ in hub.requests_log)


def test_readme_with_invalid_metadata_is_refused(hub):
    api = _api(hub)
    api.create_repo("alice/cards")
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        api.upload_file(
            path_or_fileobj=b"---\nlicense: [unclosed\n---\n", path_in_repo="README.md", repo_id="alice/cards"
        )
    bad_relation = README.replace("relation: quantized", "relation: shrunk").encode()
    with pytest.raises(ValueError, match="base_model_relation"):
        api.upload_file(path_or_fileobj=bad_relation, path_in_repo="README.md", repo_id="alice/cards")
    assert hub.list_files("alice/cards") == [".gitattributes"]


def test_commit_is_all_or_nothing(hub):
    api = _api(hub)
    hub.seed_repo("alice/atomic", {"a.txt": b"a"})
    operations = [
        CommitOperationAdd(path_in_repo="b.txt", path_or_fileobj=b"b"),
        CommitOperationDelete(path_in_repo="missing.txt"),
    ]
    with pytest.raises(EntryNotFoundError):
        api.create_commit("alice/atomic", operations, commit_message="half")
    assert hub.list_files("alice/atomic") == ["a.txt"] and len(hub.commits("alice/atomic")) == 1

    api.create_commit(
        "alice/atomic",
        [CommitOperationAdd(path_in_repo="b.txt", path_or_fileobj=b"b"), CommitOperationDelete(path_in_repo="a.txt")],
        commit_message="swap",
    )
    assert hub.list_files("alice/atomic") == ["b.txt"]
    assert hub.commits("alice/atomic")[-1]["deleted"] == ["a.txt"]


def test_repo_exists_and_delete_repo(hub):
    api = _api(hub)
    api.create_repo("alice/doomed")
    assert api.repo_exists("alice/doomed")
    api.delete_repo("alice/doomed")
    assert not api.repo_exists("alice/doomed") and not hub.repo_exists("alice/doomed")
    with pytest.raises(RepositoryNotFoundError):
        api.delete_repo("alice/doomed")
    api.delete_repo("alice/doomed", missing_ok=True)


def test_missing_and_private_repos_raise_repository_not_found(hub, tmp_path):
    hub.seed_repo("alice/secret", {"config.json": b"{}"}, private=True)
    for token in (ALICE, BOB, False):
        with pytest.raises(RepositoryNotFoundError):
            _api(hub, token).model_info("alice/missing")
    with pytest.raises(RepositoryNotFoundError):
        _api(hub, BOB).model_info("alice/secret")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/secret", "config.json", endpoint=hub.endpoint, token=BOB, cache_dir=tmp_path)
    assert not _api(hub, BOB).repo_exists("alice/secret")
    assert _api(hub, ALICE).repo_exists("alice/secret")
    with pytest.raises(RevisionNotFoundError):
        _api(hub).model_info("alice/secret", revision="v9")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("alice/secret", "nope.json", endpoint=hub.endpoint, token=ALICE, cache_dir=tmp_path)


def test_gated_repo_raises_gated_repo_error_until_granted(hub, tmp_path):
    weights = tmp_path / "model.safetensors"
    _safetensors(weights)
    hub.seed_repo("ptq-org/gated", {"model.safetensors": weights}, gated=True, granted=("carol",))
    bob = _api(hub, BOB)
    assert bob.model_info("ptq-org/gated").gated == "auto"  # metadata stays visible
    assert bob.repo_exists("ptq-org/gated")
    for token in (BOB, False):
        with pytest.raises(GatedRepoError):
            hf_hub_download(
                "ptq-org/gated", "model.safetensors", endpoint=hub.endpoint, token=token, cache_dir=tmp_path
            )
    with pytest.raises(GatedRepoError):
        bob.get_safetensors_metadata("ptq-org/gated")
    assert _api(hub, CAROL).get_safetensors_metadata("ptq-org/gated").sharded is False  # granted
    assert _api(hub, ALICE).get_safetensors_metadata("ptq-org/gated").sharded is False  # org member


def test_writing_outside_own_namespace_is_forbidden(hub):
    hub.seed_repo("alice/mine", {"a.txt": b"a"})
    bob = _api(hub, BOB)
    with pytest.raises(HfHubHTTPError) as err:
        bob.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/mine")
    assert err.value.response.status_code == 403 and not isinstance(err.value, RepositoryNotFoundError)
    with pytest.raises(HfHubHTTPError) as err:
        bob.create_repo("ptq-org/not-bobs")
    assert err.value.response.status_code == 403

    hub.seed_repo("carol/own", {"a.txt": b"a"})
    with pytest.raises(HfHubHTTPError) as err:  # read-only token, own namespace
        _api(hub, CAROL).upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="carol/own")
    assert err.value.response.status_code == 403
    assert hub.list_files("alice/mine") == ["a.txt"] and hub.list_files("carol/own") == ["a.txt"]


def test_transient_503_retried_by_backoff_routes_raised_by_others(hub, tmp_path):
    """Which client calls survive one 503 (huggingface_hub 2.4.0).

    Retried (``http_backoff``, ~1 s wait): tree listing (``list_repo_files``), ``preupload``,
    and ``hf_hub_download``'s HEAD (re-tried when no cached copy exists). Also the commit
    POST made by ``upload_folder`` when hf_xet is installed.
    Not retried, surfaces as ``HfHubHTTPError``: ``whoami``, ``model_info``/``repo_info``,
    ``create_repo``, and the commit POST made by ``create_commit``/``upload_file``.
    """
    hub.seed_repo("alice/flaky", {"config.json": b"{}"})
    api = _api(hub)

    hub.fail_requests("/tree/", times=1)
    assert api.list_repo_files("alice/flaky") == ["config.json"]
    assert [path for _, path, _ in hub.requests_log].count(
        "/api/models/alice/flaky/tree/main?recursive=true&expand=false"
    ) == 2

    hub.fail_requests("/resolve/", times=1)
    path = Path(hf_hub_download("alice/flaky", "config.json", endpoint=hub.endpoint, token=ALICE))
    assert path.read_bytes() == b"{}"
    assert tmp_path in path.parents  # the `hub` fixture moved the client's default cache under tmp_path

    hub.fail_requests("/api/whoami-v2", times=1)
    with pytest.raises(HfHubHTTPError) as err:
        api.whoami()
    assert err.value.response.status_code == 503
    assert api.whoami()["name"] == "alice"
