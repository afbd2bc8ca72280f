"""quantize_to_hub / plan_hub_model / default_target_repo against the loopback Hub server.

Every test drives the real huggingface_hub client over HTTP (``hub`` fixture in
conftest.py); nothing in the client is patched. Error tests assert the error type,
a message fragment, that the token is in no message, and that no target repo with
content was left behind.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from conftest import import_tool, min_logits_cosine
from factory import make_checkpoint
from huggingface_hub import HfApi, ModelCard, snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError

import ptq_core
from ptq_core.errors import (
    CalibrationRequiredError,
    DiskSpaceError,
    GatedRepoError,
    HubNetworkError,
    HubPermissionError,
    InvalidOptionError,
    NoSafetensorsError,
    RepoNotFoundError,
    SchemeNotSupportedError,
    TargetRepoExistsError,
    TokenError,
)
from ptq_core.hubjob import (
    HubResult,
    default_target_repo,
    plan_hub_model,
    quantize_to_hub,
)
from ptq_core.redact import redact
from ptq_core.repo_files import select_repo_files

ALICE, BOB, CAROL = "hf_test_alice", "hf_test_bob", "hf_test_readonly"
SOURCE = "bob/tiny-llama"
TARGET_FP8 = "alice/tiny-llama-FP8-BLOCK"
# Logits cosine of a correct run of the end-to-end test (transformers 5.24, torch 2.13, CPU, bf16);
# the test's bound is conftest.min_logits_cosine of it.
HUB_MEASURED_COSINE = {"FP8_BLOCK": 0.99757, "NVFP4A16": 0.98247}
# Messages checked by several tests.
NVFP4_NEEDS_CALIBRATION = r"NVFP4 needs a calibrated input global scale, which needs calibration data\. Pick NVFP4A16"
NO_TOKEN = r"No Hugging Face token found\. Pass token=\.\.\., set HF_TOKEN"
COMMIT_FAILED = r"commit to \(?alice/tiny-llama-FP8-BLOCK\)? on .*: HTTP 500\. Gave up after 4 attempts"


def _not_found(repo_id: str) -> str:
    return rf"Repo '{repo_id}' was not found on .*, or it is private and this token cannot see it"


pytestmark = pytest.mark.usefixtures("fast_retries")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A sharded tiny llama with a README (license, tags), a *.bin duplicate and side files."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-llama", "llama", shards=2, bin_stub=True)


def _repo_files(folder: Path) -> dict[str, Path | bytes]:
    files: dict[str, Path | bytes] = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    files["original/consolidated.00.pth"] = b"a duplicate in another format"
    files["original/params.json"] = b"{}"  # a side file beside weights: the folder stays behind
    files["onnx/model.onnx"] = b"another duplicate"
    files["1_Pooling/config.json"] = b'{"pooling_mode_mean_tokens": true}'  # sentence-transformers
    files["additional_chat_templates/tool_use.jinja"] = b"{{ messages }}"
    return files


@pytest.fixture
def source(hub, checkpoint) -> str:
    hub.seed_repo(SOURCE, _repo_files(checkpoint))
    return SOURCE


@pytest.fixture
def work_dir(tmp_path) -> Path:
    return tmp_path / "work"


def _no_job_dirs(work_dir: Path) -> bool:
    return not work_dir.exists() or not any(work_dir.iterdir())


def _assert_no_target_content(hub, repo_id: str) -> None:
    if hub.repo_exists(repo_id):
        assert [f for f in hub.list_files(repo_id) if f != ".gitattributes"] == []


def _downloads_of_weights(hub) -> list[str]:
    """GETs of weight bytes: a streamed job's header reads (Range from byte 0) do not count."""
    return [
        path
        for method, path, headers in hub.requests_log
        if method == "GET" and path.endswith(".safetensors") and not headers.get("range", "").startswith("bytes=0-")
    ]


# --- end to end ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scheme", "suffix", "tag"),
    [("FP8_BLOCK", "FP8-BLOCK", "fp8-block"), ("NVFP4A16", "NVFP4A16", "nvfp4a16")],
)
def test_quantize_to_hub_end_to_end(hub, source, checkpoint, work_dir, tmp_path, caplog, scheme, suffix, tag):
    caplog.set_level(logging.DEBUG)
    events: list[tuple[str, int, int]] = []

    result = quantize_to_hub(source, scheme, token=ALICE, work_dir=work_dir, progress=lambda *e: events.append(e))

    target = f"alice/tiny-llama-{suffix}"
    assert isinstance(result, HubResult)
    assert result.repo_id == target
    assert result.repo_url == f"{hub.endpoint}/{target}"
    assert result.scheme == scheme
    assert result.size_after < result.size_before
    assert result.ratio == pytest.approx(result.size_before / result.size_after)
    # Streamed: download, quantize and upload overlap; each is timed from its first to its last event.
    assert set(result.timings) == {"plan", "download", "quantize", "upload", "card", "commit", "total"}
    assert result.plan.scheme_name == scheme
    assert _no_job_dirs(work_dir), "the per-job temp folder must be removed"

    # One commit holds everything; the only other commit is the repo's creation.
    commits = hub.commits(target)
    assert len(commits) == 2 and commits[-1]["oid"] == result.commit_sha
    assert scheme in commits[-1]["message"] and source in commits[-1]["message"]
    files = set(hub.list_files(target))
    assert {
        "README.md",
        "config.json",
        "model.safetensors.index.json",
        "LICENSE",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "generation_config.json",
        "1_Pooling/config.json",
        "additional_chat_templates/tool_use.jinja",
    } <= files
    assert not any(f.endswith((".bin", ".pth", ".onnx")) or f.startswith(("original/", "onnx/")) for f in files)
    # Only what the output needs was downloaded.
    downloaded = [p for m, p, _ in hub.requests_log if m == "GET" and "/resolve/" in p]
    assert not any(p.endswith((".bin", ".pth", ".onnx", "README.md")) for p in downloaded)

    # Progress: the stages in order of their first event, each ending complete (streamed: the
    # download, quantize and upload events interleave; a job this short stages nothing on the
    # branch before its final commit, so there is no "stage" event).
    stages = list(dict.fromkeys(stage for stage, _, _ in events))
    assert stages == ["download", "validate", "quantize", "write", "upload", "card", "commit"]
    for stage in stages:
        last = [e for e in events if e[0] == stage][-1]
        assert last[1] == last[2]

    # The pushed repo, as a user gets it.
    local = Path(snapshot_download(target, endpoint=hub.endpoint, token=ALICE, cache_dir=tmp_path / "dl"))
    card = ModelCard.load(local / "README.md")
    assert card.content == result.card
    data = card.data.to_dict()
    assert data["base_model"] == source
    assert data["base_model_relation"] == "quantized"
    assert data["license"] == "apache-2.0"
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "text-generation"
    assert data["language"] == ["en"]
    assert {"compressed-tensors", tag, "llama"} <= set(data["tags"])
    assert f"vllm serve {target}" in card.text
    assert f"]({hub.endpoint}/{source})" in card.text  # links to the source card
    assert "A seeded random" not in card.text  # ... instead of copying its body

    # The token is in no file, log line, card or summary.
    for path in local.rglob("*"):
        if path.is_file():
            assert ALICE.encode() not in path.read_bytes(), path
    assert ALICE not in caplog.text
    assert ALICE not in result.card
    md = result.to_markdown()
    assert ALICE not in md
    assert f"[{target}]({result.repo_url})" in md and "time: upload" in md

    # It loads in transformers (compressed-tensors decompresses on CPU) and its logits are as close
    # to the source's as a correct run's (test_transformers_load.py explains the bound).
    transformers = import_tool("transformers", "transformers is not installed (pip install -e '.[test]')")
    ids = torch.tensor([[1, 5, 9, 42, 7, 100]])
    with torch.no_grad():
        reference = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16)(ids).logits
        logits = transformers.AutoModelForCausalLM.from_pretrained(local, dtype=torch.bfloat16)(ids).logits
    cosine = torch.nn.functional.cosine_similarity(logits.float().flatten(), reference.float().flatten(), dim=0).item()
    bound = min_logits_cosine(HUB_MEASURED_COSINE[scheme])
    assert bound <= cosine < 0.999999, f"logits cosine {cosine:.5f}, bound {bound:.5f}"


def test_quantize_to_hub_into_org_private_and_token_from_env(hub, source, work_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", ALICE)
    result = quantize_to_hub(source, "FP8_BLOCK", target="ptq-org/tiny-fp8", private=True, work_dir=work_dir)
    assert result.repo_id == "ptq-org/tiny-fp8"
    info = HfApi(endpoint=hub.endpoint, token=ALICE).model_info("ptq-org/tiny-fp8")
    assert info.private is True
    # Private: another user cannot see it.
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.endpoint, token=BOB).model_info("ptq-org/tiny-fp8")


# The client itself retries HEAD/preupload on 408/429/500/502/503/504 with 1-8 s waits; a 520
# is a 5xx it does not retry, so these tests measure ptq-hub's own retries, quickly.
TRANSIENT = 520


def test_transient_download_failures_are_retried(hub, source, work_dir, caplog):
    hub.fail_requests("model-00001-of-00002.safetensors", times=2, status=TRANSIENT)
    result = quantize_to_hub(source, "FP8_BLOCK", token=ALICE, work_dir=work_dir)
    assert result.repo_id == TARGET_FP8
    assert "retry 1/3" in caplog.text


def test_each_shard_is_preuploaded_alone_and_retried_alone(hub, source, work_dir, caplog):
    """The streamed job pre-uploads shard by shard (to the staging branch), each with its own
    retries: a transient failure costs one retry of one shard, and no shard is sent twice."""
    caplog.set_level(logging.WARNING)
    hub.fail_requests("/preupload/ptq-staging-", times=1, status=TRANSIENT)
    result = quantize_to_hub(source, "FP8_BLOCK", token=ALICE, work_dir=work_dir)
    staged = [path for method, path, _ in hub.requests_log if method == "POST" and "/preupload/ptq-staging-" in path]
    shards = [f for f in hub.list_files(result.repo_id) if f.endswith(".safetensors")]
    assert len(staged) == len(shards) + 1  # one request per shard, plus the one retried
    assert re.search(r"Transient error during 'upload model-\d+-of-\d+\.safetensors to[^']*' \(HTTP 520\); retry 1/3",
                     caplog.text)


def test_overwrite_replaces_contents_in_one_commit(hub, source, work_dir):
    hub.seed_repo(TARGET_FP8, {"README.md": "---\nlicense: mit\n---\nold\n", "stale.safetensors": b"old"})
    result = quantize_to_hub(source, "FP8_BLOCK", token=ALICE, work_dir=work_dir, overwrite=True)
    commits = hub.commits(TARGET_FP8)
    assert len(commits) == 2 and commits[-1]["oid"] == result.commit_sha
    assert commits[-1]["deleted"] == ["stale.safetensors"]
    assert "stale.safetensors" not in hub.list_files(TARGET_FP8)


# --- errors: each one typed, readable, token-free, nothing half-made ------------------
def _check_error(excinfo, hub, target=TARGET_FP8, caplog=None):
    message = str(excinfo.value)
    for token in (ALICE, BOB, CAROL):
        assert token not in message
        assert caplog is None or token not in caplog.text
    _assert_no_target_content(hub, target)


def test_unknown_or_calibration_scheme_fails_before_any_request(hub, source, work_dir):
    with pytest.raises(SchemeNotSupportedError, match=r"Unknown scheme 'FP9_MAGIC'\. Data-free presets: .*FP8_BLOCK"):
        quantize_to_hub(source, "FP9_MAGIC", token=ALICE, work_dir=work_dir)
    with pytest.raises(CalibrationRequiredError, match=NVFP4_NEEDS_CALIBRATION):
        quantize_to_hub(source, "NVFP4", token=ALICE, work_dir=work_dir)
    with pytest.raises(InvalidOptionError, match=r"'bob/bad--name' is neither a folder here nor a valid Hub repo id"):
        quantize_to_hub("bob/bad--name", "FP8_BLOCK", token=ALICE, work_dir=work_dir)
    assert hub.requests_log == []


def test_source_not_found(hub, work_dir):
    with pytest.raises(RepoNotFoundError, match=_not_found("bob/nope")) as excinfo:
        quantize_to_hub("bob/nope", "FP8_BLOCK", token=ALICE, work_dir=work_dir)
    _check_error(excinfo, hub, "alice/nope-FP8-BLOCK")
    assert not hub.repo_exists("alice/nope-FP8-BLOCK")


def test_private_source_without_access(hub, checkpoint, work_dir):
    hub.seed_repo(SOURCE, _repo_files(checkpoint), private=True)
    with pytest.raises(RepoNotFoundError, match=_not_found(SOURCE)) as excinfo:
        quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=work_dir)
    _check_error(excinfo, hub)
    assert not hub.repo_exists(TARGET_FP8)


def test_gated_source_says_how_to_request_access(hub, checkpoint, work_dir):
    hub.seed_repo(SOURCE, _repo_files(checkpoint), gated=True, granted=("carol",))
    with pytest.raises(GatedRepoError, match="Request access on " + hub.endpoint + "/" + SOURCE) as excinfo:
        quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=work_dir)
    assert "alice" in str(excinfo.value)
    _check_error(excinfo, hub)
    assert _downloads_of_weights(hub) == []


def test_gated_source_with_access_works(hub, checkpoint, work_dir):
    hub.seed_repo(SOURCE, _repo_files(checkpoint), gated=True, granted=("alice",))
    assert quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=work_dir).repo_id == TARGET_FP8


def test_invalid_token(hub, source, work_dir, caplog):
    caplog.set_level(logging.DEBUG)
    bad = "hf_" + "notarealtoken" * 3  # token-shaped, built here so no token-like literal is committed
    rejected = r"The Hub rejected the token: it is invalid or expired\. Create a new token"
    with pytest.raises(TokenError, match=rejected) as excinfo:
        quantize_to_hub(source, "FP8_BLOCK", token=bad, work_dir=work_dir)
    assert bad not in str(excinfo.value) and bad not in caplog.text
    _check_error(excinfo, hub, caplog=caplog)


def test_missing_token(hub, source, work_dir):
    with pytest.raises(TokenError, match=NO_TOKEN) as excinfo:
        quantize_to_hub(source, "FP8_BLOCK", work_dir=work_dir)
    _check_error(excinfo, hub)
    assert hub.requests_log == []


def test_target_exists_and_is_not_empty(hub, source, work_dir):
    hub.seed_repo(TARGET_FP8, {"README.md": "---\nlicense: mit\n---\nmine\n"})
    taken = (rf"Target repo {TARGET_FP8} already holds 1 file\(s\) \(README\.md\)\. "
             r"Pick another target, or pass overwrite=True")
    with pytest.raises(TargetRepoExistsError, match=taken):
        quantize_to_hub(source, "FP8_BLOCK", token=ALICE, work_dir=work_dir)
    assert len(hub.commits(TARGET_FP8)) == 1  # untouched
    assert _downloads_of_weights(hub) == []


def test_read_only_token_cannot_push(hub, source, work_dir):
    read_only = r"The token of user 'carol' is read-only, so it cannot create or write carol/tiny-llama-FP8-BLOCK"
    with pytest.raises(HubPermissionError, match=read_only) as excinfo:
        quantize_to_hub(source, "FP8_BLOCK", token=CAROL, work_dir=work_dir)
    _check_error(excinfo, hub, "carol/tiny-llama-FP8-BLOCK")
    assert not hub.repo_exists("carol/tiny-llama-FP8-BLOCK")


def test_no_write_permission_in_namespace(hub, source, work_dir):
    with pytest.raises(HubPermissionError, match=r"User 'bob' is not a member of 'ptq-org', so the token cannot create "
                       r"ptq-org/tiny") as excinfo:
        quantize_to_hub(source, "FP8_BLOCK", target="ptq-org/tiny", token=BOB, work_dir=work_dir)
    _check_error(excinfo, hub, "ptq-org/tiny")
    assert not hub.repo_exists("ptq-org/tiny")
    assert _downloads_of_weights(hub) == []


@pytest.mark.parametrize("failing", ["/resolve/", "model-00002-of-00002.safetensors"], ids=["all-files", "one-shard"])
def test_network_failure_during_download(hub, source, work_dir, failing, caplog):
    caplog.set_level(logging.DEBUG)
    hub.fail_requests(failing, times=1000, status=TRANSIENT)
    gave_up = r"Could not download .*\(bob/tiny-llama\) on .*: HTTP 520\. Gave up after 4 attempts"
    with pytest.raises(HubNetworkError, match=gave_up) as excinfo:
        quantize_to_hub(source, "FP8_BLOCK", token=ALICE, work_dir=work_dir)
    _check_error(excinfo, hub, caplog=caplog)
    assert not hub.repo_exists(TARGET_FP8)
    assert _no_job_dirs(work_dir)


def test_hub_unreachable(hub, source, work_dir, monkeypatch):
    monkeypatch.setattr(ptq_core.constants, "HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    refused = (r"Could not check the token \(whoami\) on http://127\.0\.0\.1:9: "
               r".*Connection refused\. Gave up after 4 attempts")
    with pytest.raises(HubNetworkError, match=refused) as excinfo:
        quantize_to_hub(source, "FP8_BLOCK", token=ALICE, work_dir=work_dir)
    _check_error(excinfo, hub)


def test_unknown_revision(hub, source, work_dir):
    with pytest.raises(RepoNotFoundError, match="Revision 'v9' was not found in bob/tiny-llama"):
        quantize_to_hub(source, "FP8_BLOCK", token=ALICE, revision="v9", work_dir=work_dir)
    assert not hub.repo_exists(TARGET_FP8)


def test_failure_before_anything_is_staged_deletes_the_created_repo(hub, source, work_dir, caplog):
    caplog.set_level(logging.DEBUG)
    hub.fail_requests("/commit/", times=1000, status=500)  # the client does not retry commits
    with pytest.raises(HubNetworkError, match=COMMIT_FAILED) as excinfo:
        quantize_to_hub(source, "FP8_BLOCK", token=ALICE, work_dir=work_dir)
    _check_error(excinfo, hub, caplog=caplog)
    assert not hub.repo_exists(TARGET_FP8)
    assert f"Deleted {TARGET_FP8}" in caplog.text
    assert _no_job_dirs(work_dir)


def test_failure_of_the_final_commit_keeps_the_staged_shards_for_a_rerun(hub, source, work_dir, caplog):
    """Changed with streaming: once shards are staged, the repo and its staging branch stay (main empty)."""
    caplog.set_level(logging.DEBUG)
    hub.fail_requests("/commit/main", times=1000, status=500)  # the client does not retry commits
    with pytest.raises(HubNetworkError, match="commit.*2 of 2 output shard.*Rerun the same job") as excinfo:
        quantize_to_hub(source, "FP8_BLOCK", token=ALICE, work_dir=work_dir)
    _check_error(excinfo, hub, caplog=caplog)
    (branch,) = [b for b in hub.branches(TARGET_FP8) if b != "main"]
    assert branch.startswith("ptq-staging-")
    assert _no_job_dirs(work_dir)


def test_failure_during_upload_leaves_an_existing_repo_untouched(hub, source, work_dir):
    hub.seed_repo(TARGET_FP8, {"README.md": "---\nlicense: mit\n---\nold\n"})
    hub.fail_requests("/commit/main", times=1000, status=500)  # the client does not retry commits
    with pytest.raises(HubNetworkError, match=COMMIT_FAILED):
        quantize_to_hub(source, "FP8_BLOCK", token=ALICE, work_dir=work_dir, overwrite=True)
    assert hub.list_files(TARGET_FP8) == ["README.md"]
    assert len(hub.commits(TARGET_FP8)) == 1


def test_not_enough_disk_space(hub, source, work_dir, monkeypatch):
    # Streamed: only one output shard must fit (the default budget is 90% of the free space minus 10%).
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10_000_000, 9_000_000, 100_000))
    with pytest.raises(DiskSpaceError, match=r"Output shard model-0000\d-of-00002.safetensors needs .* more than "
                                             r"the disk budget of 80.00 KB"):
        quantize_to_hub(source, "FP8_BLOCK", token=ALICE, work_dir=work_dir)
    assert _downloads_of_weights(hub) == []
    assert not hub.repo_exists(TARGET_FP8)


def test_duplicate_consolidated_weights_are_not_downloaded(hub, work_dir, tmp_path):
    single = make_checkpoint(tmp_path / "single", "llama")
    files = _repo_files(single)
    files["consolidated.safetensors"] = single / "model.safetensors"
    hub.seed_repo(SOURCE, files)
    result = quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=work_dir)
    assert "consolidated.safetensors" not in hub.list_files(result.repo_id)
    assert not any("consolidated" in path for path in _downloads_of_weights(hub))


def test_source_without_safetensors(hub, work_dir):
    hub.seed_repo("bob/old", {"config.json": b"{}", "pytorch_model.bin": b"x"})
    with pytest.raises(NoSafetensorsError, match=r"bob/old has no \*\.safetensors weights at its root \(it has "
                       r"pytorch_model\.bin\)"):
        quantize_to_hub("bob/old", "FP8_BLOCK", token=ALICE, work_dir=work_dir)


# --- plan_hub_model ---------------------------------------------------------------------
def test_plan_hub_model_reads_headers_only(hub, source, checkpoint):
    plan = plan_hub_model(source, "NVFP4A16").plan
    local = plan_hub_model(str(checkpoint), "NVFP4A16").plan  # the same job planned from a local copy
    assert (plan.size_before, plan.size_after) == (local.size_before, local.size_after)
    assert dict(plan.skipped) == dict(local.skipped)
    assert "lm_head.weight" in plan.skipped
    # Weight bytes were only read through Range requests (headers).
    for method, path, headers in hub.requests_log:
        if method == "GET" and path.endswith(".safetensors"):
            assert headers.get("range"), path


def test_plan_hub_model_errors(hub, checkpoint):
    with pytest.raises(CalibrationRequiredError, match=NVFP4_NEEDS_CALIBRATION):
        plan_hub_model(SOURCE, "NVFP4")
    assert hub.requests_log == []
    with pytest.raises(RepoNotFoundError, match=_not_found("bob/nope")):
        plan_hub_model("bob/nope", "FP8_BLOCK")
    hub.seed_repo(SOURCE, _repo_files(checkpoint), gated=True)
    with pytest.raises(GatedRepoError, match=rf"{SOURCE} is a gated repo and this token has not been granted access\. "
                       rf"Request access on {hub.endpoint}/{SOURCE}"):
        plan_hub_model(SOURCE, "FP8_BLOCK", token=ALICE)


# --- naming ------------------------------------------------------------------------------
def test_default_target_repo(hub):
    assert default_target_repo("meta-llama/Llama-3.2-1B", "FP8_BLOCK", namespace="me") == "me/Llama-3.2-1B-FP8-BLOCK"
    assert default_target_repo("org/M", "nvfp4a16", token=ALICE) == "alice/M-NVFP4A16"
    assert [m for m, _, _ in hub.requests_log] == ["GET"]  # one whoami
    with pytest.raises(InvalidOptionError, match=r"'not a repo' is not a valid source repo id"):
        default_target_repo("not a repo", "FP8_BLOCK", namespace="me")
    with pytest.raises(InvalidOptionError, match=r"'me/x{90}-FP8-BLOCK' is not a valid target repo id"):
        default_target_repo("org/" + "x" * 90, "FP8_BLOCK", namespace="me")
    with pytest.raises(TokenError, match=NO_TOKEN):
        default_target_repo("org/M", "FP8_BLOCK")


def test_select_repo_files():
    paths = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "special_tokens_map.json",
        "chat_template.jinja",
        "modeling_custom.py",
        "LICENSE",
        "NOTICE.txt",
        "USE_POLICY.md",
        "README.md",
        ".gitattributes",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
        "model.pt",
        "model.gguf",
        "model.onnx",
        "original/consolidated.00.pth",
        "original/params.json",
        "onnx/model.onnx",
        "flax_model.msgpack",
    ]
    assert select_repo_files(paths) == sorted(
        [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "tokenizer.model",
            "special_tokens_map.json",
            "chat_template.jinja",
            "modeling_custom.py",
            "LICENSE",
            "NOTICE.txt",
            "USE_POLICY.md",
        ]
    )


def test_redaction():
    assert redact("token hf_test_alice leaked", "hf_test_alice") == "token *** leaked"
    assert "hf_abcdefghijklmnopqrstuvwxyz12" not in redact("x hf_abcdefghijklmnopqrstuvwxyz12 y", None)
    assert redact("Authorization: Bearer abc.def", None) == "Authorization: Bearer ***"


def test_hub_result_to_markdown():
    result = HubResult(
        repo_id="a/b",
        repo_url="https://huggingface.co/a/b",
        commit_sha="0123456789abcdef",
        scheme="W4A16",
        size_before=4_000_000_000,
        size_after=1_100_000_000,
        ratio=4 / 1.1,
        timings={"download": 1.0, "quantize": 2.5},
        plan=None,
        card="",
    )
    md = result.to_markdown()
    assert "| repo | [a/b](https://huggingface.co/a/b) |" in md
    assert "| size before | 4.00 GB |" in md and "| size after | 1.10 GB |" in md
    assert "| ratio | 3.64x smaller |" in md and "| time: quantize | 2.5 s |" in md
    assert "`0123456789`" in md


def test_model_free_ptq_accepts_a_hub_id(hub, source, tmp_path, monkeypatch):
    """model_free_ptq(model_stub=<repo id>) downloads only what it needs, then quantizes."""
    monkeypatch.setattr(ptq_core.constants, "PTQ_HUB_CACHE", tmp_path / "cache")
    out = tmp_path / "out"
    result = ptq_core.model_free_ptq(source, out, "FP8_DYNAMIC", ignore=["lm_head"], token=BOB)
    assert result.plan.quantized
    assert (out / "model.safetensors.index.json").is_file()
    downloaded = sorted(p.name for p in (tmp_path / "cache" / "models").rglob("*") if p.is_file())
    assert "pytorch_model.bin" not in downloaded and "model.onnx" not in downloaded
    assert any(name.endswith(".safetensors") for name in downloaded)


def test_model_free_ptq_hub_id_not_found(hub, tmp_path):
    with pytest.raises(RepoNotFoundError, match=_not_found("nobody/missing")):
        ptq_core.model_free_ptq("nobody/missing", tmp_path / "out", "FP8_DYNAMIC", token=ALICE)
    assert not (tmp_path / "out").exists()
