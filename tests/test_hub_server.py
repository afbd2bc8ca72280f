"""The loopback Hub server speaks what the real huggingface_hub client expects.

Every test drives the installed client over real HTTP (no patching of the client);
the ``hub`` fixture (tests/conftest.py) gives an empty server per test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationCopy,
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
from huggingface_hub.utils import get_session
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


# --- branches, refs, commits per branch ----------------------------------------------------


def test_branches_take_commits_and_serve_downloads_apart_from_main(hub, tmp_path):
    api = _api(hub)
    api.create_repo("alice/branchy")
    first = api.upload_file(path_or_fileobj=b"v1", path_in_repo="a.txt", repo_id="alice/branchy")
    api.upload_file(path_or_fileobj=b"v2", path_in_repo="a.txt", repo_id="alice/branchy")

    api.create_branch("alice/branchy", branch="staging/part-1")  # from main's head
    api.create_branch("alice/branchy", branch="old", revision=first.oid)  # from a commit id
    api.create_branch("alice/branchy", branch="old", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as err:
        api.create_branch("alice/branchy", branch="old")
    assert err.value.response.status_code == 409
    with pytest.raises(HfHubHTTPError, match="Invalid branch name") as err:
        api.create_branch("alice/branchy", branch="bad..name")
    with pytest.raises(RevisionNotFoundError):
        api.create_branch("alice/branchy", branch="from-nowhere", revision="v9")

    staged = api.upload_file(
        path_or_fileobj=b"part", path_in_repo="p1.txt", repo_id="alice/branchy", revision="staging/part-1"
    )
    assert hub.list_files("alice/branchy") == [".gitattributes", "a.txt"]  # main untouched
    assert hub.list_files("alice/branchy", revision="staging/part-1") == [".gitattributes", "a.txt", "p1.txt"]
    assert hub.stats.commits == {("alice/branchy", "main"): 2, ("alice/branchy", "staging/part-1"): 1}

    refs = api.list_repo_refs("alice/branchy")
    heads = {ref.name: ref.target_commit for ref in refs.branches}
    assert heads == {"main": hub.commits("alice/branchy")[-1]["oid"], "staging/part-1": staged.oid, "old": first.oid}
    assert [ref.name for ref in refs.branches][0] == "main" and refs.tags == []
    assert hub.branches("alice/branchy") == heads

    titles = [c.title for c in api.list_repo_commits("alice/branchy", revision="staging/part-1")]
    upload_a = "Upload a.txt with huggingface_hub"
    assert titles == ["Upload p1.txt with huggingface_hub", upload_a, upload_a, "initial commit"]
    assert [c.commit_id for c in api.list_repo_commits("alice/branchy", revision="old")] == [
        first.oid,
        hub.commits("alice/branchy")[0]["oid"],
    ]
    assert api.model_info("alice/branchy", revision="staging/part-1").sha == staged.oid
    assert api.list_repo_files("alice/branchy", revision="old") == [".gitattributes", "a.txt"]
    old = hf_hub_download("alice/branchy", "a.txt", revision="old", endpoint=hub.endpoint, token=ALICE)
    assert Path(old).read_bytes() == b"v1"
    part = hf_hub_download(
        "alice/branchy", "p1.txt", revision="staging/part-1", endpoint=hub.endpoint, token=ALICE, cache_dir=tmp_path
    )
    assert Path(part).read_bytes() == b"part"
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("alice/branchy", "p1.txt", endpoint=hub.endpoint, token=ALICE, cache_dir=tmp_path)


def test_commit_to_a_branch_checks_its_own_head(hub):
    api = _api(hub)
    hub.seed_repo("alice/heads", {"a.txt": b"a"})
    api.create_branch("alice/heads", branch="dev")
    base = hub.branches("alice/heads")["dev"]
    api.create_commit(
        "alice/heads",
        [CommitOperationAdd(path_in_repo="b.txt", path_or_fileobj=b"b")],
        commit_message="on dev",
        revision="dev",
        parent_commit=base,
    )
    with pytest.raises(HfHubHTTPError) as err:  # dev moved since `base`
        api.create_commit(
            "alice/heads",
            [CommitOperationAdd(path_in_repo="c.txt", path_or_fileobj=b"c")],
            commit_message="stale",
            revision="dev",
            parent_commit=base,
        )
    assert err.value.response.status_code == 412
    # main's head is still `base`: a commit there with that parent goes through.
    api.create_commit(
        "alice/heads",
        [CommitOperationAdd(path_in_repo="m.txt", path_or_fileobj=b"m")],
        commit_message="on main",
        parent_commit=base,
    )
    assert hub.list_files("alice/heads") == ["a.txt", "m.txt"]
    assert hub.list_files("alice/heads", revision="dev") == ["a.txt", "b.txt"]


def test_copy_from_another_branch_and_delete_branches(hub):
    api = _api(hub)
    hub.seed_repo("alice/parts", {"config.json": b"{}"})
    api.create_branch("alice/parts", branch="part-1")
    api.upload_file(path_or_fileobj=b"notes", path_in_repo="notes.txt", repo_id="alice/parts", revision="part-1")
    api.create_commit(
        "alice/parts",
        [CommitOperationCopy(src_path_in_repo="notes.txt", path_in_repo="NOTES.txt", src_revision="part-1")],
        commit_message="finalize",
    )
    assert hub.read_file("alice/parts", "NOTES.txt") == b"notes"

    api.delete_branch("alice/parts", branch="part-1")
    assert hub.branches("alice/parts").keys() == {"main"}
    with pytest.raises(RevisionNotFoundError):
        api.delete_branch("alice/parts", branch="part-1")
    with pytest.raises(RevisionNotFoundError):  # a deleted branch takes no commit
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/parts", revision="part-1")
    with pytest.raises(HfHubHTTPError, match="default branch") as err:
        api.delete_branch("alice/parts", branch="main")
    assert err.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as err:  # bob may not touch alice's branches
        _api(hub, BOB).create_branch("alice/parts", branch="bobs")
    assert err.value.response.status_code == 403


# --- bandwidth ---------------------------------------------------------------------------


RATE = 2_000_000  # bytes/s: two 1 MB bodies take about a second together
SIZE = 1_000_000


def _timed_in_parallel(*calls) -> float:
    with ThreadPoolExecutor(len(calls)) as pool:
        start = time.monotonic()
        for future in [pool.submit(call) for call in calls]:
            future.result()
        return time.monotonic() - start


def _assert_rate(seconds: float, nbytes: int) -> None:
    # The bucket lets at most one burst (64 KiB here) run ahead of the rate: a lower bound that
    # two connections limited each on their own (0.5 s) would miss. The upper bound leaves room
    # for a loaded machine.
    floor = (nbytes - 64 * 1024) / RATE
    assert floor * 0.97 <= seconds <= floor * 1.6, f"{nbytes} bytes in {seconds:.2f} s at {RATE} B/s"


def test_download_bandwidth_is_shared_by_concurrent_downloads(hub):
    hub.seed_repo("alice/big", {"a.bin": os.urandom(SIZE), "b.bin": os.urandom(SIZE)})
    hub.configure(download_bandwidth=RATE)
    headers = {"authorization": f"Bearer {ALICE}"}

    def fetch(name: str):
        return lambda: get_session().get(f"{hub.endpoint}/alice/big/resolve/main/{name}", headers=headers).content

    before = hub.stats.bytes_out
    _assert_rate(_timed_in_parallel(fetch("a.bin"), fetch("b.bin")), 2 * SIZE)
    # the handler counts a body once its last write returned, which can be just after the client has read it
    settle = time.monotonic() + 2
    while hub.stats.bytes_out - before < 2 * SIZE and time.monotonic() < settle:
        time.sleep(0.01)
    assert hub.stats.bytes_out - before == 2 * SIZE

    hub.configure(download_bandwidth=None)  # lifted: the same bytes in a blink
    assert _timed_in_parallel(fetch("a.bin"), fetch("b.bin")) < 0.3


def test_upload_bandwidth_caps_request_bodies(hub):
    hub.seed_repo("alice/up", {"a.txt": b"a"})
    hub.configure(upload_bandwidth=RATE)
    headers = {"authorization": f"Bearer {ALICE}", "content-type": "application/x-www-form-urlencoded"}
    body = b"paths=a.txt&pad=" + b"x" * (SIZE - 16)

    def post():
        url = f"{hub.endpoint}/api/models/alice/up/paths-info/main"
        response = get_session().post(url, headers=headers, content=body)
        assert response.status_code == 200 and response.json()[0]["path"] == "a.txt"

    _assert_rate(_timed_in_parallel(post, post), 2 * SIZE)
    assert hub.stats.bytes_in == 2 * SIZE


# --- network chaos (inject_network_fault) ---------------------------------------------
def test_network_faults_are_per_request_bounded_and_cleared_by_reset(hub):
    import httpx2

    hub.seed_repo("alice/c", {"a.bin": b"x" * 5000})
    url = f"{hub.endpoint}/alice/c/resolve/main/a.bin"
    headers = {"authorization": f"Bearer {ALICE}"}
    with httpx2.Client(timeout=None) as client:  # a client without deadlines: only the fault's hold ends it
        hub.inject_network_fault("a.bin", "stall", hold=0.5)
        began = time.monotonic()
        with pytest.raises(httpx2.RemoteProtocolError, match="received 0 bytes, expected 5000"):
            client.get(url, headers=headers)
        assert 0.5 <= time.monotonic() - began < 2

        hub.inject_network_fault("a.bin", "trickle", hold=0.6, trickle_bytes=100, trickle_every=0.1)
        with pytest.raises(httpx2.RemoteProtocolError, match=r"received [3-6]00 bytes, expected 5000"):
            client.get(url, headers=headers)
        assert client.get(url, headers=headers).content == b"x" * 5000  # one request each, then served

        hub.inject_network_fault("/api/models/alice/c", "rate_limit", times=2, retry_after="7",
                                 ratelimit='"api";r=0;t=7')
        for _ in range(2):
            answer = client.get(f"{hub.endpoint}/api/models/alice/c", headers=headers)
            assert answer.status_code == 429
            assert (answer.headers["retry-after"], answer.headers["ratelimit"]) == ("7", '"api";r=0;t=7')
        assert client.get(f"{hub.endpoint}/api/models/alice/c", headers=headers).status_code == 200
        assert [kind for kind, *_ in hub.net_fault_log] == ["stall", "trickle", "rate_limit", "rate_limit"]

        hub.inject_network_fault("a.bin", "stall", hold=30)
        hub.reset()  # clears armed faults and their log
        assert hub.net_fault_log == []
    with pytest.raises(ValueError, match="hold must be in"):
        hub.inject_network_fault("a.bin", "stall", hold=600)


def test_standalone_server_seeds_serves_and_reports_stats(tmp_path):
    """``python tests/hub_server.py`` for benchmarks: the server in its own process."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"model_type": "llama"}')
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("hub_server.py")), "--seed", f"bob/src={tmp_path / 'model'}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        info = json.loads(proc.stdout.readline())
        path = hf_hub_download("bob/src", "config.json", endpoint=info["endpoint"], token=BOB, cache_dir=tmp_path / "c")
        assert Path(path).read_text() == '{"model_type": "llama"}'
        stats = get_session().get(info["stats_url"]).json()
        assert stats["bytes_out"] == len('{"model_type": "llama"}') and stats["lfs_puts"] == 0
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
