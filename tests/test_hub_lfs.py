"""LFS on the loopback Hub server, through the real huggingface_hub client and through ptq-hub.

The ``hub`` fixture (conftest.py) turns the client's Xet path off: the server only
speaks LFS (batch API, basic and multipart PUTs, verify), as the Hub does for any
client without hf_xet. Most tests lower ``lfs_threshold`` so that files of a few KB
take the path a 10 MiB+ shard takes on the Hub.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from factory import make_checkpoint
from hub_server import LFS_CDN_PATH, LFS_MIN_SIZE, LFS_UPLOAD_PATH
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationCopy,
    HfApi,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
)
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.lfs import UploadInfo, post_lfs_batch_info
from huggingface_hub.utils import get_session
from safetensors.torch import save

import ptq_core
from ptq_core import _http as hub_http

ALICE, BOB = "hf_test_alice", "hf_test_bob"
REPO = "alice/lfs"
THRESHOLD = 4096


def _api(hub, token=ALICE) -> HfApi:
    return HfApi(endpoint=hub.endpoint, token=token)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _puts(hub) -> list[str]:
    return [path for method, path, _ in hub.requests_log if method == "PUT"]


@pytest.fixture
def api(hub) -> HfApi:
    hub.configure(lfs_threshold=THRESHOLD)
    api = _api(hub)
    api.create_repo(REPO)
    return api


def test_default_threshold_is_the_hubs_10_mib(hub):
    assert hub.lfs_threshold == LFS_MIN_SIZE == 10 * 1024 * 1024
    hub.configure(lfs_threshold=5)
    hub.reset()  # what the `hub` fixture does between tests
    assert hub.lfs_threshold == LFS_MIN_SIZE


def test_preupload_mode_switches_at_the_threshold(hub, api):
    small, large = os.urandom(THRESHOLD - 1), os.urandom(THRESHOLD)
    api.upload_file(path_or_fileobj=small, path_in_repo="small.dat", repo_id=REPO)
    assert _puts(hub) == [] and hub.stats.lfs_puts == 0  # inline, base64 in the commit
    api.upload_file(path_or_fileobj=large, path_in_repo="large.dat", repo_id=REPO)
    assert len(_puts(hub)) == 1 and _puts(hub)[0].startswith(LFS_UPLOAD_PATH)
    assert hub.stats.lfs_bytes == {_sha256(large): THRESHOLD}
    assert _sha256(large) in hub.lfs_objects(REPO) and _sha256(small) not in hub.lfs_objects(REPO)

    infos = {f.path: f for f in api.get_paths_info(REPO, ["small.dat", "large.dat"])}
    assert infos["small.dat"].lfs is None
    assert infos["large.dat"].lfs.sha256 == _sha256(large) and infos["large.dat"].lfs.size == THRESHOLD
    assert hub.read_file(REPO, "large.dat") == large and hub.read_file(REPO, "small.dat") == small


def test_lfs_upload_goes_to_the_storage_host_without_token(hub, api):
    data = os.urandom(3 * THRESHOLD)
    api.upload_file(path_or_fileobj=data, path_in_repo="w.bin", repo_id=REPO)
    batch = [(p, h) for m, p, h in hub.requests_log if p == f"/{REPO}.git/info/lfs/objects/batch"]
    assert len(batch) == 1 and batch[0][1]["authorization"] == f"Bearer {ALICE}"
    (put,) = [(p, h) for m, p, h in hub.requests_log if m == "PUT"]
    assert put[1]["host"] == hub.storage_endpoint.removeprefix("http://")
    assert "authorization" not in put[1]  # a presigned-style URL, like S3's
    verify = [h for m, p, h in hub.requests_log if p == f"/{REPO}.git/info/lfs/objects/verify"]
    assert len(verify) == 1 and verify[0]["authorization"] == f"Bearer {ALICE}"
    assert hub.stats.commits == {(REPO, "main"): 1}
    assert hub.stats.lfs_stored == {_sha256(data): 1}


def test_multipart_upload_above_the_part_size(hub, api):
    hub.configure(lfs_part_size=5000)
    data = os.urandom(12_345)  # parts of 5000, 5000, 2345
    api.upload_file(path_or_fileobj=data, path_in_repo="model.safetensors", repo_id=REPO)
    assert [p.rsplit("/", 1)[1] for p in _puts(hub)] == ["1", "2", "3"]
    assert hub.stats.lfs_puts == 3 and hub.stats.lfs_bytes == {_sha256(data): len(data)}
    completions = [p for m, p, _ in hub.requests_log if m == "POST" and p.startswith(LFS_UPLOAD_PATH)]
    assert len(completions) == 1
    assert hub.read_file(REPO, "model.safetensors") == data


def test_object_already_stored_is_not_uploaded_again(hub, api):
    """Content-addressed storage: what makes a re-run send only what is missing."""
    data, other = os.urandom(2 * THRESHOLD), os.urandom(2 * THRESHOLD)
    api.upload_file(path_or_fileobj=data, path_in_repo="a.bin", repo_id=REPO)
    hub.requests_log.clear()
    api.create_commit(
        REPO,
        [
            CommitOperationAdd(path_in_repo="copy-of-a.bin", path_or_fileobj=data),
            CommitOperationAdd(path_in_repo="b.bin", path_or_fileobj=other),
        ],
        commit_message="a again, and b",
    )
    assert len(_puts(hub)) == 1  # only b
    assert hub.stats.lfs_bytes == {_sha256(data): len(data), _sha256(other): len(other)}
    assert hub.read_file(REPO, "copy-of-a.bin") == data and hub.read_file(REPO, "b.bin") == other


def test_batch_answers_per_object(hub, api):
    data = os.urandom(THRESHOLD)
    api.upload_file(path_or_fileobj=data, path_in_repo="a.bin", repo_id=REPO)
    new = UploadInfo.from_bytes(os.urandom(10))
    actions, errors, transfer = post_lfs_batch_info(
        [UploadInfo.from_bytes(data), new], token=ALICE, repo_type="model", repo_id=REPO, endpoint=hub.endpoint
    )
    assert (errors, transfer) == ([], "basic")
    assert "actions" not in actions[0]  # stored already
    assert actions[1]["actions"]["upload"]["href"].startswith(f"{hub.storage_endpoint}{LFS_UPLOAD_PATH}")
    with pytest.raises(HfHubHTTPError) as err:  # a read-only token cannot upload
        post_lfs_batch_info([new], token="hf_test_readonly", repo_type="model", repo_id=REPO, endpoint=hub.endpoint)
    assert err.value.response.status_code == 403


def test_put_with_wrong_content_stores_nothing(hub, api):
    data = os.urandom(THRESHOLD)
    actions, _, _ = post_lfs_batch_info(
        [UploadInfo.from_bytes(data)], token=ALICE, repo_type="model", repo_id=REPO, endpoint=hub.endpoint
    )
    href = actions[0]["actions"]["upload"]["href"]
    wrong_size = get_session().put(href, content=data[:-1])
    assert wrong_size.status_code == 400 and f"must be {THRESHOLD} bytes" in wrong_size.headers["x-error-message"]
    wrong_bytes = get_session().put(href, content=bytes(THRESHOLD))
    assert wrong_bytes.status_code == 400 and "sha256 mismatch" in wrong_bytes.headers["x-error-message"]
    assert _sha256(data) not in hub.lfs_objects(REPO)
    assert hub.stats.lfs_puts == 2 and hub.stats.lfs_bytes == {_sha256(data): 2 * THRESHOLD - 1}
    assert get_session().put(href, content=data).status_code == 200
    assert hub.lfs_objects(REPO)[_sha256(data)] == THRESHOLD


def test_multipart_completion_must_list_the_etag_each_part_answered(hub, api):
    """The ETags are opaque (S3's MD5 is the storage's business), but the completion is checked against them."""
    hub.configure(lfs_part_size=5000)
    data = os.urandom(12_345)
    actions, _, transfer = post_lfs_batch_info(
        [UploadInfo.from_bytes(data)], token=ALICE, repo_type="model", repo_id=REPO, endpoint=hub.endpoint,
        transfers=["basic", "multipart"],
    )
    upload = actions[0]["actions"]["upload"]
    assert transfer == "multipart"
    etags = [get_session().put(upload["header"][str(n)], content=data[(n - 1) * 5000 : n * 5000]).headers["etag"]
             for n in (1, 2, 3)]
    assert len(set(etags)) == 3

    def complete(listed: list[str]):
        parts = [{"partNumber": n, "etag": etag} for n, etag in enumerate(listed, 1)]
        return get_session().post(upload["href"], json={"oid": _sha256(data), "parts": parts})

    swapped = complete([etags[1], etags[0], etags[2]])
    assert swapped.status_code == 400 and "Part 1" in swapped.headers["x-error-message"]
    assert _sha256(data) not in hub.lfs_objects(REPO)
    assert complete(etags).status_code == 200
    assert hub.lfs_objects(REPO)[_sha256(data)] == len(data)


def _commit_lines(*operations: dict) -> bytes:
    lines = [{"key": "header", "value": {"summary": "raw commit"}}, *operations]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def test_commit_refuses_lfs_objects_never_uploaded_and_big_inline_files(hub, api):
    url = f"{hub.endpoint}/api/models/{REPO}/commit/main"
    headers = {"authorization": f"Bearer {ALICE}", "content-type": "application/x-ndjson"}
    missing = _sha256(b"never uploaded")
    lfs_line = {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": missing, "size": 14}}
    response = get_session().post(url, headers=headers, content=_commit_lines(lfs_line))
    assert response.status_code == 400
    assert f"LFS object {missing} for w.bin is not in {REPO}'s LFS storage" in response.json()["error"]

    inline = {"key": "file", "value": {"path": "big.bin", "encoding": "base64", "content": ""}}
    inline["value"]["content"] = base64.b64encode(bytes(THRESHOLD)).decode()
    response = get_session().post(url, headers=headers, content=_commit_lines(inline))
    assert response.status_code == 400 and "must be uploaded with LFS" in response.json()["error"]
    assert hub.list_files(REPO) == [".gitattributes"] and len(hub.commits(REPO)) == 1

    # Another repo's object does not count: LFS storage is per repo.
    data = os.urandom(THRESHOLD)
    _api(hub, BOB).create_repo("bob/other")
    _api(hub, BOB).upload_file(path_or_fileobj=data, path_in_repo="w.bin", repo_id="bob/other")
    lfs_line["value"].update(oid=_sha256(data), size=THRESHOLD)
    response = get_session().post(url, headers=headers, content=_commit_lines(lfs_line))
    assert response.status_code == 400 and "not in alice/lfs's LFS storage" in response.json()["error"]


# --- a failed upload, retried, lands exactly once -------------------------------------------


@pytest.mark.parametrize("after", [False, True], ids=["refused", "response-lost"])
def test_upload_file_retried_after_a_5xx_lands_once(hub, api, after):
    """The client's own backoff retries the PUT (503, about 1 s); the object is stored once."""
    data = os.urandom(3 * THRESHOLD)
    hub.fail_requests(LFS_UPLOAD_PATH, times=1, status=503, method="PUT", after=after)
    info = api.upload_file(path_or_fileobj=data, path_in_repo="w.bin", repo_id=REPO)
    oid = _sha256(data)
    assert hub.stats.lfs_puts == 2 and hub.stats.lfs_bytes == {oid: 2 * len(data)}  # both PUTs arrived
    assert hub.stats.lfs_stored == {oid: 1}
    assert hub.lfs_objects(REPO)[oid] == len(data)
    commits = hub.commits(REPO)
    assert len(commits) == 2 and commits[-1]["oid"] == info.oid and commits[-1]["files"] == ["w.bin"]
    assert hub.stats.commits == {(REPO, "main"): 1}
    assert hub.read_file(REPO, "w.bin") == data


def test_create_commit_retried_after_a_5xx_on_a_part_lands_once(hub, api):
    hub.configure(lfs_part_size=THRESHOLD)
    big, other = os.urandom(2 * THRESHOLD + 1), os.urandom(THRESHOLD)
    hub.fail_requests(f"{LFS_UPLOAD_PATH}", times=1, status=502, method="PUT")
    api.create_commit(
        REPO,
        [
            CommitOperationAdd(path_in_repo="model-1.safetensors", path_or_fileobj=big),
            CommitOperationAdd(path_in_repo="model-2.safetensors", path_or_fileobj=other),
            CommitOperationAdd(path_in_repo="config.json", path_or_fileobj=b"{}"),
        ],
        commit_message="weights",
    )
    assert hub.stats.lfs_puts == 3 + 1 + 1  # 3 parts + 1 basic PUT + the failed one, retried
    assert hub.stats.lfs_stored == {_sha256(big): 1, _sha256(other): 1}
    assert len(hub.commits(REPO)) == 2 and hub.stats.commits == {(REPO, "main"): 1}
    assert hub.read_file(REPO, "model-1.safetensors") == big and hub.read_file(REPO, "model-2.safetensors") == other


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-llama", "llama", shards=2)


@pytest.fixture(scope="module")
def local_output(checkpoint, tmp_path_factory) -> Path:
    """The same job run locally: the pushed shards must equal these bytes."""
    out = tmp_path_factory.mktemp("local") / "out"
    ptq_core.model_free_ptq(checkpoint, out, "FP8_BLOCK", ignore=ptq_core.DEFAULT_IGNORE)
    return out


# 503: the client's backoff retries the PUT itself. 520: a 5xx the client does not retry, so
# ptq-hub's own retry runs preupload_lfs_files again (a fresh batch, then the PUT). With the
# response lost (after=True) the object is already stored: the second batch asks for nothing.
@pytest.mark.parametrize(
    ("status", "after", "resent"),
    [(503, False, True), (520, False, True), (520, True, False)],
    ids=["client-retry", "ptq-retry", "ptq-retry-response-lost"],
)
def test_quantize_to_hub_upload_failure_then_retry_lands_once(
    hub, checkpoint, local_output, tmp_path, monkeypatch, status, after, resent
):
    monkeypatch.setattr(hub_http, "_RETRY_DELAYS", (0.0, 0.0, 0.0))
    hub.configure(lfs_threshold=THRESHOLD)
    hub.seed_repo("bob/tiny-llama", {p.name: p for p in checkpoint.iterdir() if p.is_file()})
    hub.fail_requests(LFS_UPLOAD_PATH, times=1, status=status, method="PUT", after=after)

    result = ptq_core.quantize_to_hub("bob/tiny-llama", "FP8_BLOCK", token=ALICE, work_dir=tmp_path / "work")

    target = result.repo_id
    commits = hub.commits(target)
    assert len(commits) == 2 and commits[-1]["oid"] == result.commit_sha  # creation + one commit
    # Shards are staged on a branch first (streamed job); main gets exactly one commit.
    assert {branch: n for (repo, branch), n in hub.stats.commits.items() if repo == target}["main"] == 1
    assert hub.branches(target) == {"main": result.commit_sha}  # the staging branch is gone
    shards = sorted(p.name for p in local_output.glob("*.safetensors"))
    assert len(shards) == 2
    for name in [*shards, "model.safetensors.index.json"]:
        assert hub.read_file(target, name) == (local_output / name).read_bytes(), name

    pushed = {p: hub.read_file(target, p) for p in hub.list_files(target) if p != ".gitattributes"}
    lfs_files = sorted(p for p, data in pushed.items() if len(data) >= THRESHOLD)
    assert set(shards) <= set(lfs_files)
    # The streamed job pre-uploads shards on two threads, largest first: whichever met the failure
    # was sent twice (when resent), every other object exactly once.
    once = {_sha256(pushed[p]): len(pushed[p]) for p in lfs_files}
    assert set(hub.stats.lfs_bytes) == set(once)
    twice = [oid for oid, n in hub.stats.lfs_bytes.items() if n == 2 * once[oid]]
    assert len(twice) == resent and all(hub.stats.lfs_bytes[oid] == n for oid, n in once.items() if oid not in twice)
    assert hub.stats.lfs_puts == len(lfs_files) + resent
    assert hub.stats.lfs_stored == {_sha256(pushed[p]): 1 for p in lfs_files}
    assert {_sha256(pushed[p]) for p in lfs_files} <= set(hub.lfs_objects(target))


def test_copy_an_lfs_file_from_another_branch_without_reupload(hub, api, tmp_path):
    data = os.urandom(3 * THRESHOLD)
    api.create_branch(REPO, branch="staging/part-1")
    staged = api.upload_file(
        path_or_fileobj=data, path_in_repo="model-00001.safetensors", repo_id=REPO, revision="staging/part-1"
    )
    assert hub.list_files(REPO) == [".gitattributes"]  # main untouched
    assert hub.stats.lfs_puts == 1
    hub.requests_log.clear()

    api.create_commit(
        REPO,
        [
            CommitOperationCopy(
                src_path_in_repo="model-00001.safetensors", path_in_repo="model.safetensors", src_revision=staged.oid
            )
        ],
        commit_message="finalize",
    )
    assert _puts(hub) == [] and hub.stats.lfs_puts == 1 and hub.stats.lfs_bytes == {_sha256(data): len(data)}
    assert hub.read_file(REPO, "model.safetensors") == data
    assert hub.stats.commits == {(REPO, "staging/part-1"): 1, (REPO, "main"): 1}
    path = hf_hub_download(REPO, "model.safetensors", endpoint=hub.endpoint, token=ALICE, cache_dir=tmp_path)
    assert Path(path).read_bytes() == data


# --- downloads of LFS files --------------------------------------------------------------


@pytest.mark.parametrize("redirect", [False, True], ids=["direct", "cdn-redirect"])
def test_lfs_file_downloads_with_range_and_linked_headers(hub, api, tmp_path, redirect):
    tensors = {"model.layers.0.mlp.up_proj.weight": torch.arange(64 * 64, dtype=torch.float32).reshape(64, 64)}
    data = save(tensors, metadata={"format": "pt"})
    assert len(data) >= THRESHOLD
    commit = api.upload_file(path_or_fileobj=data, path_in_repo="model.safetensors", repo_id=REPO)
    hub.configure(lfs_redirect=redirect)
    hub.requests_log.clear()

    url = hf_hub_url(REPO, "model.safetensors", endpoint=hub.endpoint)
    meta = get_hf_file_metadata(url, token=ALICE)
    assert (meta.etag, meta.size, meta.commit_hash) == (_sha256(data), len(data), commit.oid)
    assert meta.location.startswith(f"{hub.storage_endpoint}{LFS_CDN_PATH}" if redirect else url)

    path = hf_hub_download(REPO, "model.safetensors", endpoint=hub.endpoint, token=ALICE, cache_dir=tmp_path)
    assert Path(path).read_bytes() == data

    ranged = get_session().get(url, headers={"authorization": f"Bearer {ALICE}", "range": "bytes=100-199"})
    assert ranged.status_code == 206 and ranged.content == data[100:200]
    assert ranged.headers["content-range"] == f"bytes 100-199/{len(data)}"

    meta_st = api.get_safetensors_metadata(REPO)
    tensor = meta_st.files_metadata["model.safetensors"].tensors["model.layers.0.mlp.up_proj.weight"]
    assert (tensor.dtype, tensor.shape) == ("F32", [64, 64])

    cdn = [h for _, p, h in hub.requests_log if p.startswith(LFS_CDN_PATH)]
    assert len(cdn) == (3 if redirect else 0)  # download, range, header read: each redirected once
    assert all("authorization" not in h for h in cdn)  # the token stays on the Hub host


def test_cdn_url_needs_its_signature(hub, api):
    data = os.urandom(THRESHOLD)
    api.upload_file(path_or_fileobj=data, path_in_repo="w.bin", repo_id=REPO)
    hub.configure(lfs_redirect=True)
    resolve = get_session().head(
        hf_hub_url(REPO, "w.bin", endpoint=hub.endpoint),
        headers={"authorization": f"Bearer {ALICE}"},
        follow_redirects=False,
    )
    assert resolve.status_code == 302 and resolve.headers["x-linked-size"] == str(THRESHOLD)
    location = resolve.headers["location"]
    assert get_session().get(location).content == data
    forged = location.split("?")[0] + "?sig=" + "0" * 32
    assert get_session().get(forged).status_code == 403


def test_lfs_is_decided_at_commit_time(hub):
    """Lowering the threshold later does not turn stored regular files into LFS ones."""
    hub.seed_repo(REPO, {"notes.txt": os.urandom(2 * THRESHOLD), "seeded.dat": os.urandom(LFS_MIN_SIZE)})
    hub.configure(lfs_threshold=THRESHOLD)
    api = _api(hub)
    infos = {f.path: f for f in api.get_paths_info(REPO, ["notes.txt", "seeded.dat"])}
    assert infos["notes.txt"].lfs is None and infos["seeded.dat"].lfs.size == LFS_MIN_SIZE
    # Each copies as on the Hub: the regular file re-sent inline (now too big for that), the LFS
    # one by sha256, no upload.
    with pytest.raises(HfHubHTTPError, match="must be uploaded with LFS"):
        api.create_commit(REPO, [CommitOperationCopy("notes.txt", "n2.txt")], commit_message="copy")
    api.create_commit(REPO, [CommitOperationCopy("seeded.dat", "s2.dat")], commit_message="copy")
    assert hub.read_file(REPO, "s2.dat") == hub.read_file(REPO, "seeded.dat") and hub.stats.lfs_puts == 0
