"""The Gradio Space (``space/app.py``) against the loopback Hub server.

Two levels:

* the event handlers called as plain functions (plan preview, run, every error
  path), with the real ``ptq_core`` and the real ``huggingface_hub`` client over HTTP;
* the running app: ``python space/app.py`` in a subprocess on a free port, with
  ``HF_ENDPOINT``/``HF_TOKEN`` pointing at the test server, driven by ``gradio_client``
  (and, through the session cookie, by Gradio's local sign-in mock).

``launch_space`` is shared with ``test_space_browser.py``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
import httpx
import pytest
import yaml
from factory import make_checkpoint

import ptq_core
from ptq_core import constants, parts
from ptq_core import _http as hub_http

ROOT = Path(__file__).resolve().parent.parent
APP_FILE = ROOT / "space" / "app.py"
ALICE, BOB = "hf_test_alice", "hf_test_bob"
SOURCE = "bob/tiny-llama"
TARGET = "alice/tiny-llama-FP8-BLOCK"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


app = _load("ptq_space_app", APP_FILE)
deploy = _load("ptq_space_deploy", ROOT / "space" / "deploy.py")


def _token(value: str = ALICE) -> gr.OAuthToken:
    return gr.OAuthToken(token=value, scope="openid profile read-repos write-repos", expires_at=0)


def _repo_files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}


class FakeProgress:
    """Stands in for ``gr.Progress``: records ``(fraction, desc)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []

    def __call__(self, fraction, desc=None, **_):
        self.calls.append((fraction, desc))


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("space") / "tiny-llama", "llama")


@pytest.fixture(scope="session")
def odd_checkpoint(tmp_path_factory) -> Path:
    """Linear inputs of 320 columns: not divisible by W4A16's group of 128 (FP8_BLOCK pads)."""
    return make_checkpoint(tmp_path_factory.mktemp("space") / "odd-llama", "llama", hidden_size=320)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "PTQ_HUB_CACHE", tmp_path / "cache")
    monkeypatch.setattr(hub_http, "_RETRY_DELAYS", (0.0, 0.0, 0.0))


@pytest.fixture
def source(hub, checkpoint) -> str:
    hub.seed_repo(SOURCE, _repo_files(checkpoint))
    return SOURCE


def _jobs_left(tmp_path: Path) -> list[Path]:
    root = tmp_path / "cache" / "space-jobs"
    return list(root.iterdir()) if root.exists() else []


def _interactive(button) -> bool:
    return button.interactive


# =============================================================================
# Form helpers
# =============================================================================
def test_scheme_choices_have_one_line_each_and_no_calibration_schemes():
    choices = {value: label for label, value in app.scheme_choices()}
    assert {"FP8_BLOCK", "FP8_DYNAMIC", "NVFP4A16", "W4A16"} <= set(choices)
    assert "NVFP4" not in choices and "FP8" not in choices  # need calibration data
    for value, label in choices.items():
        assert label.startswith(f"{value} — ") and "\n" not in label
    assert "Hopper" in choices["FP8_BLOCK"]


def test_the_ignore_box_is_read_by_the_core_parser(monkeypatch):
    """What the box holds reaches the job as the CLI and the Action would read it."""
    seen = {}

    def fake_plan(model_id, scheme, **kwargs):
        seen.update(kwargs)
        raise ptq_core.InvalidOptionError("stop here")

    monkeypatch.setattr(ptq_core, "plan_hub_model", fake_plan)
    text = "lm_head, re:.*a{1,2}$\n\n# a comment\nre:.*mlp\\.(gate|router)$\n"
    app.preview_plan(SOURCE, "FP8_BLOCK", text, _token())
    assert seen["ignore"] == ["lm_head", "re:.*a{1,2}$", "re:.*mlp\\.(gate|router)$"]
    assert seen["default_ignore"] is False


def test_a_default_looking_target_follows_the_scheme_and_a_chosen_one_stays():
    assert ptq_core.is_default_target("alice/tiny-llama-FP8-BLOCK", "bob/tiny-llama")
    assert ptq_core.is_default_target("tiny-llama-W4A16", "bob/tiny-llama")
    assert not ptq_core.is_default_target("alice/tiny-llama-fast", "bob/tiny-llama")
    assert not ptq_core.is_default_target("alice/other-FP8-BLOCK", "bob/tiny-llama")


@pytest.mark.parametrize(("target", "kept"), [
    ("my-org/tiny-llama-FP8-BLOCK", "my-org/"),  # an org's default name: every scheme goes to that org
    ("tiny-llama-FP8-BLOCK", None),               # no namespace: the user's own
    ("", None),
])
def test_several_schemes_keep_the_namespace_of_a_default_target(target, kept):
    schemes, options = app.form_request(SOURCE, "FP8_BLOCK", ["W4A16"], "", target, False, False, None, False)
    assert schemes == ["FP8_BLOCK", "W4A16"] and options["target"] == kept
    jobs = ptq_core.make_jobs(SOURCE, schemes, **options)
    if kept:
        assert [j.target for j in jobs] == ["my-org/tiny-llama-FP8-BLOCK", "my-org/tiny-llama-W4A16"]


def test_a_chosen_target_with_several_schemes_is_refused_not_dropped():
    _, options = app.form_request(SOURCE, "FP8_BLOCK", ["W4A16"], "", "my-org/mine", False, False, None, False)
    with pytest.raises(ptq_core.errors.InvalidOptionError, match="ending in '/'"):
        ptq_core.make_jobs(SOURCE, ["FP8_BLOCK", "W4A16"], **options)


def test_local_mock_token_becomes_hf_token(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", ALICE)
    assert app.token_from(_token("mock-oauth-token-for-local-dev")) == ALICE
    assert app.token_from(_token(BOB)) == BOB
    assert app.token_from(None) is None
    # On a Space the OAuth token is used as it is.
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("SPACE_ID", "alice/ptq-hub")
    assert app.token_from(_token("mock-oauth-token-for-local-dev")) == "mock-oauth-token-for-local-dev"


# =============================================================================
# Plan preview
# =============================================================================
def test_preview_reads_headers_only_and_prefills_the_form(hub, source):
    plan_md, ignore, target, button, recent = app.preview_model(SOURCE, "FP8_BLOCK", [], _token())

    assert "### Plan: FP8_BLOCK" in plan_md
    assert "| quantized: FP8_BLOCK (float-quantized) | 14 |" in plan_md
    assert "| norm layer | 5 |" in plan_md and "default: head (name)" in plan_md
    assert "Ready to run" in plan_md and "**Streamed:** at most" in plan_md
    assert ignore == "lm_head\nre:.*embed_tokens$"  # only the defaults this model has
    assert target == TARGET
    assert _interactive(button) is True
    assert recent == [SOURCE]
    # No weight bytes were read: every request for a safetensors file is a HEAD or a ranged GET.
    weight_reads = [(m, h) for m, p, h in hub.requests_log if p.endswith(".safetensors") and "/resolve/" in p]
    assert weight_reads and all(m == "HEAD" or "range" in h for m, h in weight_reads)


def test_preview_of_an_awq_model_says_it_is_dequantized_first(hub, tmp_path):
    from factory import make_awq_checkpoint

    awq = make_awq_checkpoint(tmp_path / "awq", "llama", group_size=64)
    hub.seed_repo(SOURCE, _repo_files(awq))
    plan_md, _, _, button, _ = app.preview_model(SOURCE, "NVFP4A16", [], _token())
    assert "source: AWQ 4-bit (groups of 64), converted and decompressed in memory (14 weights)" in plan_md
    assert "| quantized: NVFP4A16 (nvfp4-pack-quantized) | 14 |" in plan_md
    assert _interactive(button) is True


def test_preview_without_sign_in_still_plans_a_public_model(hub, source):
    plan_md, ignore, target, button, _ = app.preview_model(SOURCE, "FP8_BLOCK", None, None)
    assert "Ready to run" in plan_md and ignore == "lm_head\nre:.*embed_tokens$"
    assert target == ""  # the placeholder says: sign in to pre-fill
    assert _interactive(button) is True


def test_preview_with_no_model_asks_for_one(hub):
    plan_md, ignore, target, button, recent = app.preview_model("  ", "FP8_BLOCK", ["a/b"], _token())
    assert "Type a model id" in plan_md and (ignore, target, recent) == ("", "", ["a/b"])
    assert _interactive(button) is False


def test_preview_refuses_a_missing_repo(hub):
    plan_md, _, _, button, recent = app.preview_model("bob/does-not-exist", "FP8_BLOCK", [], _token())
    assert plan_md.startswith("**Cannot quantize `bob/does-not-exist` with FP8_BLOCK.**")
    assert "was not found" in plan_md and ALICE not in plan_md
    assert _interactive(button) is False and recent == []


def _without_file_system(monkeypatch, name: str) -> None:
    """Run ``ptq_core.<name>`` with stat and directory listings failing (Gradio's own components do both)."""
    function = getattr(ptq_core, name)

    def guarded(*args, **kwargs):
        with _no_file_system():
            return function(*args, **kwargs)

    monkeypatch.setattr(ptq_core, name, guarded)


@contextmanager
def _no_file_system():
    """Fail any stat or directory listing: the Space must refuse a path from its text alone."""
    import os as os_module

    def refuse(*args, **kwargs):
        raise AssertionError(f"file-system access: {args!r}")

    saved = {name: getattr(os_module, name) for name in ("stat", "lstat", "scandir", "listdir")}
    try:
        for name in saved:
            setattr(os_module, name, refuse)
        yield
    finally:
        for name, function in saved.items():
            setattr(os_module, name, function)


PATHS = ["/usr/lib", "/", "~", "~/models", "..", "../x", "./model", "a/b/c"]


@pytest.mark.parametrize("path", PATHS)
def test_preview_refuses_a_path_before_touching_the_file_system(hub, path, monkeypatch):
    app.preview_model(path, "FP8_BLOCK", [], None)  # first imports of the modules read files
    hub.requests_log.clear()
    _without_file_system(monkeypatch, "plan_hub_model")
    plan_md, ignore, target, button, recent = app.preview_model(path, "FP8_BLOCK", [], None)
    replan_md, replan_button = app.preview_plan(path, "FP8_BLOCK", "lm_head", None)
    for text in (plan_md, replan_md):
        assert text.startswith("**Cannot quantize")
        assert "is a file-system path; only Hub repos can be quantized here" in text and "Plan:" not in text
    assert (target, recent) == ("", []) and not _interactive(button) and not _interactive(replan_button)
    assert not hub.requests_log


def test_preview_never_plans_a_local_checkpoint_folder(hub, checkpoint, tmp_path, monkeypatch):
    # An absolute path to a real checkpoint is refused; a repo-id-shaped relative folder is
    # looked up on the Hub, never read from disk.
    plan_md, *_ = app.preview_model(str(checkpoint), "FP8_BLOCK", [], None)
    assert "is a file-system path" in plan_md and "Plan:" not in plan_md
    monkeypatch.chdir(tmp_path)
    shutil.copytree(checkpoint, tmp_path / "bob" / "local-only")
    plan_md, *_ = app.preview_model("bob/local-only", "FP8_BLOCK", [], None)
    assert "was not found" in plan_md and "Plan:" not in plan_md


def test_preview_refuses_an_overlong_id_with_a_short_message(hub):
    plan_md, *_ = app.preview_model("org/" + "m" * 5000, "FP8_BLOCK", [], None)
    assert "is not a Hub repo id: repo ids are at most 96 characters" in plan_md and len(plan_md) < 400


@pytest.mark.parametrize("path", ["/usr/lib", "~", "../x"])
def test_run_refuses_a_path_before_touching_the_file_system(hub, tmp_path, path, monkeypatch):
    app.preview_model(path, "FP8_BLOCK", [], None)  # first imports of the modules read files
    hub.requests_log.clear()
    _without_file_system(monkeypatch, "make_job")
    with pytest.raises(gr.Error, match="is a file-system path; only Hub repos") as excinfo:
        app.run_job(path, "FP8_BLOCK", "lm_head", "", False, False, _token())
    assert excinfo.value.title == "Invalid option"
    assert not (tmp_path / "cache" / "space-jobs").exists() and not hub.requests_log  # no job folder made


def test_preview_refuses_a_gated_repo_without_access(hub, checkpoint):
    hub.seed_repo(SOURCE, _repo_files(checkpoint), gated=True)
    plan_md, _, _, button, _ = app.preview_model(SOURCE, "FP8_BLOCK", [], _token())
    assert "gated repo" in plan_md and "Request access" in plan_md
    assert _interactive(button) is False


def test_preview_refuses_a_repo_without_safetensors(hub):
    hub.seed_repo("bob/old", {"config.json": b"{}", "pytorch_model.bin": b"x"})
    plan_md, _, _, button, _ = app.preview_model("bob/old", "FP8_BLOCK", [], _token())
    assert "no *.safetensors weights" in plan_md and "(it has pytorch_model.bin)" in plan_md
    assert _interactive(button) is False


def test_preview_refuses_shapes_the_scheme_cannot_split(hub, odd_checkpoint):
    hub.seed_repo("bob/odd-llama", _repo_files(odd_checkpoint))
    plan_md, ignore, _, button, _ = app.preview_model("bob/odd-llama", "W4A16", [], _token())
    assert "320 columns are not divisible by the group size 128" in plan_md
    assert _interactive(button) is False
    assert ptq_core.parse_ignore_text(ignore) == list(ptq_core.DEFAULT_IGNORE)  # still safe for the next scheme
    plan_md, target, button = app.change_scheme("bob/odd-llama", "FP8_BLOCK", ignore, "", _token())
    assert "ignored: matches `lm_head`" in plan_md and target == "alice/odd-llama-FP8-BLOCK" and _interactive(button)
    # FP8_BLOCK pads the scale grid, so the same model is fine with it.
    plan_md, _, _, button, _ = app.preview_model("bob/odd-llama", "FP8_BLOCK", [], _token())
    assert "Ready to run" in plan_md and _interactive(button) is True


def _free_space(monkeypatch, free: int) -> None:
    """Pretend every disk has ``free`` bytes free: the core derives its disk budget from it."""
    usage = shutil.disk_usage("/")
    monkeypatch.setattr(parts.shutil, "disk_usage", lambda path: usage._replace(free=free))


def test_preview_runs_a_model_larger_than_the_disk_and_refuses_what_cannot_fit_streamed(hub, source, monkeypatch):
    plan = ptq_core.plan_hub_model(SOURCE, "FP8_BLOCK", token=_token().token).plan
    largest_shard = max(sum(o.nbytes for o in plan.shard_outputs(s)) for s in plan.shards)
    assert largest_shard < plan.size_before
    _free_space(monkeypatch, plan.size_before - 1)  # the model does not fit...
    plan_md, _, _, button, _ = app.preview_model(SOURCE, "FP8_BLOCK", [], _token())
    assert "**Ready to run.**" in plan_md and "**Streamed:** at most" in plan_md  # ...its shards in flight do
    assert _interactive(button) is True
    _free_space(monkeypatch, 1_000)
    plan_md, _, _, button, _ = app.preview_model(SOURCE, "FP8_BLOCK", [], _token())
    assert "**Too large for this Space, even streamed.**" in plan_md and "(budget 800 B on this Space)" in plan_md
    assert "more than the disk budget of 800 B" in plan_md
    assert _interactive(button) is False


def test_the_space_and_the_core_give_one_verdict_between_the_two_disk_thresholds(hub, source, monkeypatch, tmp_path):
    largest = ptq_core.plan_hub_model(SOURCE, "FP8_BLOCK", token=_token().token).footprint.largest_shard_bytes
    free = largest * 11 // 10  # the largest output shard fits the free space, not the budget (90% minus a margin)
    _free_space(monkeypatch, free)
    assert parts.default_disk_budget(tmp_path) < largest < free
    plan_md, _, _, button, _ = app.preview_model(SOURCE, "FP8_BLOCK", [], _token())
    assert "**Too large for this Space, even streamed.**" in plan_md and _interactive(button) is False
    with pytest.raises(ptq_core.DiskSpaceError, match="more than the disk budget") as refused:
        ptq_core.quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=tmp_path)
    assert str(refused.value).split(" (90% of the free space in ")[0] in plan_md  # the same words
    assert not hub.repo_exists("alice/tiny-llama-FP8-BLOCK")


def test_replan_with_an_edited_ignore_list(hub, source):
    plan_md, button = app.preview_plan(SOURCE, "FP8_BLOCK", "", _token())
    assert "| quantized: FP8_BLOCK (float-quantized) | 16 |" in plan_md  # lm_head + embeddings too
    assert _interactive(button) is True
    plan_md, button = app.preview_plan(SOURCE, "FP8_BLOCK", "re:(", _token())
    assert "is not a valid regular expression" in plan_md and _interactive(button) is False


def test_replan_refuses_an_overlong_ignore_list_before_reading_the_model(hub, source):
    hub.requests_log.clear()
    text = "\n".join(f"re:.*layers\\.{i}\\.x$" for i in range(20_000))
    plan_md, button = app.preview_plan(SOURCE, "FP8_BLOCK", text, _token())
    assert plan_md.startswith(f"**Cannot quantize `{SOURCE}` with FP8_BLOCK.**")
    assert "more than 1000 entries, the limit" in plan_md and _interactive(button) is False
    assert not hub.requests_log  # refused before any request


def test_replan_with_everything_ignored_has_nothing_to_run(hub, source):
    plan_md, button = app.preview_plan(SOURCE, "FP8_BLOCK", "re:.*", _token())
    assert "**Nothing to quantize**" in plan_md and _interactive(button) is False


def test_changing_the_scheme_replans_and_renames_a_default_target(hub, source):
    plan_md, target, button = app.change_scheme(SOURCE, "W4A16", "lm_head", TARGET, _token())
    assert "### Plan: W4A16" in plan_md and target == "alice/tiny-llama-W4A16" and _interactive(button)
    _, target, _ = app.change_scheme(SOURCE, "NVFP4A16", "lm_head", "alice/my-own-name", _token())
    assert target == "alice/my-own-name"  # a name the user typed is kept


def test_search_falls_back_to_recent_models_when_the_hub_has_no_search(hub):
    # The loopback server has no /api/models listing: suggestions come from this browser's history.
    assert app.search_models("tiny", ["bob/tiny-llama", "org/other"], None) == ["bob/tiny-llama"]
    assert app.search_models("t", ["bob/tiny-llama"], None) == ["bob/tiny-llama"]  # too short to search
    update = app.on_model_typed(["bob/tiny-llama"], gr.KeyUpData(None, {"key": "y", "input_value": "bob/tin"}), None)
    assert update.choices == [("bob/tin", "bob/tin"), ("bob/tiny-llama", "bob/tiny-llama")]


def test_search_uses_the_hub_listing_when_there_is_one(hub, monkeypatch):
    handle = hub._handle

    def with_search(method, path, query, headers, body):
        if path == "/api/models" and method == "GET":
            needle = query.get("search", [""])[0]
            ids = [i for i in ("bob/tiny-llama", "bob/tiny-mixtral", "org/big") if needle in i]
            return (
                200,
                {"Content-Type": "application/json"},
                json.dumps([{"id": i, "modelId": i} for i in ids]).encode(),
            )
        return handle(method, path, query, headers, body)

    monkeypatch.setattr(hub, "_handle", with_search)
    assert app.search_models("tiny", ["me/tiny-recent"], _token()) == [
        "bob/tiny-llama",
        "bob/tiny-mixtral",
        "me/tiny-recent",
    ]


# =============================================================================
# Run
# =============================================================================
def test_run_pushes_the_repo_with_progress_and_cleans_up(hub, source, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    progress = FakeProgress()
    result_md, card_md, card_box = app.run_job(
        SOURCE, "FP8_BLOCK", "lm_head\nre:.*embed_tokens$", TARGET, False, False, _token(), progress=progress
    )

    assert result_md.startswith(f"### Done: [{TARGET}]({hub.endpoint}/{TARGET})")
    assert "| scheme | `FP8_BLOCK` |" in result_md
    assert card_md.startswith("```yaml\n") and "base_model: bob/tiny-llama" in card_md
    assert "base_model_relation: quantized" in card_md
    assert card_box.visible is True
    files = hub.list_files(TARGET)
    assert "model.safetensors" in files and "README.md" in files and "config.json" in files
    assert json.loads(hub.read_file(TARGET, "config.json"))["quantization_config"]["ignore"] == [
        "lm_head",
        "re:.*embed_tokens$",
    ]
    # One bar: fractions never go back, every stage is named, and it ends full.
    fractions = [f for f, _ in progress.calls]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    descs = " ".join(d for _, d in progress.calls)
    for word in ("Downloading", "Quantizing tensor", "Writing the model card", "Uploading"):
        assert word in descs
    assert _jobs_left(tmp_path) == []
    assert all(ALICE not in r.getMessage() for r in caplog.records)
    assert ALICE not in result_md + card_md


def test_run_with_more_schemes_pushes_one_repo_each_from_one_read(hub, source, tmp_path):
    progress = FakeProgress()
    result_md, card_md, _ = app.run_job(SOURCE, "FP8_BLOCK", "lm_head", TARGET, False, False, _token(),
                                        progress=progress, also=["W4A16", "FP8_BLOCK"])
    repos = [TARGET, "alice/tiny-llama-W4A16"]  # the default-looking target follows each scheme
    assert [line for line in result_md.splitlines() if line.startswith("### Done")] == [
        f"### Done: [{r}]({hub.endpoint}/{r})" for r in repos]
    assert all("model.safetensors" in hub.list_files(r) for r in repos)
    assert "FP8_BLOCK" in card_md
    assert result_md.count("The model card is below.") == 1  # one card shown: the first scheme's section says so
    assert result_md.index("The model card is below.") < result_md.index("### Done: [alice/tiny-llama-W4A16]")
    fractions = [f for f, _ in progress.calls]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert _jobs_left(tmp_path) == []
    with pytest.raises(gr.Error, match="target cannot be given with several schemes"):
        app.run_job(SOURCE, "FP8_BLOCK", "lm_head", "alice/mine", False, False, _token(), progress=progress,
                    also=["W4A16"])


def test_run_without_sign_in_is_a_friendly_error(hub, source, tmp_path):
    with pytest.raises(gr.Error) as excinfo:
        app.run_job(SOURCE, "FP8_BLOCK", "lm_head", "", False, False, None, progress=FakeProgress())
    assert excinfo.value.message == app.NOT_SIGNED_IN and excinfo.value.title == "Not signed in"
    assert not hub.repo_exists(TARGET) and _jobs_left(tmp_path) == []


def test_run_without_a_model_asks_for_one(hub):
    with pytest.raises(gr.Error, match=r"Pick a model first: type a Hub id such as org/Model"):
        app.run_job("", "FP8_BLOCK", "", "", False, False, _token(), progress=FakeProgress())


@pytest.mark.parametrize(
    ("seed", "model", "message", "title"),
    [
        ("missing", "bob/does-not-exist", "Repo 'bob/does-not-exist' was not found on", "Repo not found"),
        ("gated", SOURCE, f"{SOURCE} is a gated repo and user 'alice' has not been granted access. Request access on",
         "Gated repo"),
        ("bin-only", "bob/old", "bob/old has no *.safetensors weights at its root (it has pytorch_model.bin)",
         "No safetensors"),
    ],
)
def test_run_refuses_sources_that_cannot_work(hub, checkpoint, tmp_path, seed, model, message, title):
    if seed == "gated":
        hub.seed_repo(SOURCE, _repo_files(checkpoint), gated=True)
    elif seed == "bin-only":
        hub.seed_repo("bob/old", {"config.json": b"{}", "pytorch_model.bin": b"x"})
    with pytest.raises(gr.Error) as excinfo:
        app.run_job(model, "FP8_BLOCK", "lm_head", "", False, False, _token(), progress=FakeProgress())
    assert message in excinfo.value.message and excinfo.value.title == title
    assert ALICE not in excinfo.value.message and "Traceback" not in excinfo.value.message
    assert excinfo.value.duration is None  # stays on screen until closed
    assert not hub.repo_exists(TARGET) and _jobs_left(tmp_path) == []


def test_run_refuses_an_existing_target_unless_overwrite(hub, source, tmp_path):
    hub.seed_repo(TARGET, {"README.md": "---\nlicense: mit\n---\nmine\n", "model.safetensors": b"old"})
    with pytest.raises(gr.Error) as excinfo:
        app.run_job(SOURCE, "FP8_BLOCK", "lm_head", TARGET, False, False, _token(), progress=FakeProgress())
    assert f"Target repo {TARGET} already holds 2 file(s)" in excinfo.value.message
    assert excinfo.value.title == "Target repo exists"
    assert hub.read_file(TARGET, "README.md").endswith(b"mine\n") and _jobs_left(tmp_path) == []

    result_md, _, _ = app.run_job(
        SOURCE, "FP8_BLOCK", "lm_head", TARGET, False, True, _token(), progress=FakeProgress()
    )
    assert result_md.startswith(f"### Done: [{TARGET}]")
    assert b"base_model: bob/tiny-llama" in hub.read_file(TARGET, "README.md")


def test_run_hides_an_unexpected_crash_and_still_cleans_up(hub, source, tmp_path, monkeypatch):
    seen: list[Path] = []

    def crash(job, *, work_dir, token, **kwargs):
        seen.append(Path(work_dir))
        (Path(work_dir) / "partial.safetensors").write_bytes(b"x")
        raise RuntimeError(f"boom with {token} inside")

    monkeypatch.setattr(ptq_core, "quantize_to_hub", crash)
    with pytest.raises(gr.Error) as excinfo:
        app.run_job(SOURCE, "FP8_BLOCK", "lm_head", "", False, False, _token(), progress=FakeProgress())
    assert excinfo.value.message.startswith("Unexpected RuntimeError while quantizing bob/tiny-llama")
    assert ALICE not in excinfo.value.message and "boom" not in excinfo.value.message
    assert seen and not seen[0].exists() and _jobs_left(tmp_path) == []


# =============================================================================
# The Blocks: queue and wiring (built in-process with the sign-in mock stubbed)
# =============================================================================
@pytest.mark.filterwarnings("ignore:Gradio does not support OAuth features outside of a Space")
def test_blocks_queue_one_job_at_a_time_with_a_bounded_queue(monkeypatch):
    import gradio.oauth

    monkeypatch.setattr(gradio.oauth, "get_token", lambda: ALICE)
    monkeypatch.setattr(
        gradio.oauth, "whoami", lambda: {"type": "user", "name": "alice", "fullname": "Alice", "avatarUrl": ""}
    )
    demo = app.build_demo()
    assert demo._queue.max_size == app.QUEUE_MAX_SIZE
    by_name = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name}
    assert by_name["quantize"].concurrency_limit == 1 and by_name["quantize"].concurrency_id == "quantize"
    assert by_name["quantize"].fn is app.run_job
    assert by_name["preview"].fn is app.preview_model
    assert any(isinstance(block, gr.LoginButton) for block in demo.blocks.values())


# =============================================================================
# Space metadata and deployment
# =============================================================================
def _front_matter(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_space_readme_front_matter_matches_the_app():
    meta = _front_matter(ROOT / "space" / "README.md")
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gr.__version__
    assert meta["app_file"] == "app.py" and (ROOT / "space" / meta["app_file"]).is_file()
    assert meta["hf_oauth"] is True
    assert {"read-repos", "write-repos", "manage-repos"} <= set(meta["hf_oauth_scopes"])
    assert len(meta["short_description"]) <= 60


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is in the standard library from Python 3.11 on")
def test_space_requirements_cover_the_core_dependencies():
    import tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lines = (ROOT / "space" / "requirements.txt").read_text(encoding="utf-8").splitlines()
    requirements = {line.replace(" ", "") for line in lines if line.strip() and not line.startswith("#")}
    assert {dep.replace(" ", "") for dep in project["dependencies"]} == requirements
    assert not any(r.startswith("gradio") for r in requirements)  # comes from sdk_version


def test_deploy_pushes_space_and_core_in_one_commit(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", ALICE)
    hub.seed_repo(
        "alice/ptq-hub", {"README.md": "---\nsdk: gradio\n---\nold\n", "old_helper.py": "x"}, repo_type="space"
    )

    assert deploy.main(["--space-id", "alice/ptq-hub"]) == 0

    files = set(hub.list_files("alice/ptq-hub", repo_type="space"))
    core = {f"ptq_core/{p.relative_to(ROOT / 'ptq_core').as_posix()}" for p in (ROOT / "ptq_core").rglob("*.py")}
    assert files == {"app.py", "jobs_panel.py", "page_text.py", "preview.py", "signin.py", "README.md",
                     "requirements.txt", *core}
    assert hub.read_file("alice/ptq-hub", "app.py", repo_type="space") == APP_FILE.read_bytes()
    last = hub.commits("alice/ptq-hub", repo_type="space")[-1]
    assert last["deleted"] == ["old_helper.py"] and "ptq_core/hubjob/run.py" in last["files"]
    assert len(hub.commits("alice/ptq-hub", repo_type="space")) == 2


def test_deploy_creates_a_new_space_and_reports_refusals(hub, monkeypatch, caplog):
    assert deploy.deploy("alice/fresh-space", token=ALICE) == f"{hub.endpoint}/spaces/alice/fresh-space"
    assert "app.py" in hub.list_files("alice/fresh-space", repo_type="space")
    caplog.set_level(logging.INFO)
    assert deploy.main(["--space-id", "alice/other-space", "--token", BOB]) == 1  # bob may not write there
    assert "Deploy failed" in caplog.text and BOB not in caplog.text
    assert not hub.repo_exists("alice/other-space", repo_type="space")


# =============================================================================
# The running app, through gradio_client
# =============================================================================
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def launch_space(endpoint: str, work: Path, *, token: str = ALICE, timeout: float = 120.0) -> Iterator[str]:
    """``python space/app.py`` on a free port against ``endpoint``; yields its URL, stops it after."""
    port = _free_port()
    env = {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_TOKEN": token,
        "HF_HOME": str(work / "hf_home"),
        "PTQ_HUB_CACHE": str(work / "cache"),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONUNBUFFERED": "1",
        # This checkout's ptq_core, not the one an editable install points at (a git worktree's tests).
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    for name in ("SYSTEM", "SPACE_ID", "HUGGING_FACE_HUB_TOKEN", "GRADIO_SERVER_PORT", "GRADIO_SERVER_NAME"):
        env.pop(name, None)
    log = (work / "space.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, str(APP_FILE), "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the Space exited with {proc.returncode}:\n{(work / 'space.log').read_text()}")
            try:
                if httpx.get(f"{url}/config", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Space did not start in {timeout:.0f} s:\n{(work / 'space.log').read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def space_url(hub_server, tmp_path_factory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("space-app")
    with launch_space(hub_server.endpoint, work) as url:
        yield url
    assert ALICE not in (work / "space.log").read_text(), "the token leaked into the Space's log"


def test_running_space_previews_and_quantizes(hub, source, space_url):
    from gradio_client import Client

    client = Client(space_url, oauth_token=ALICE, verbose=False)
    plan_md, ignore, target, recent = client.predict(SOURCE, "FP8_BLOCK", [], api_name="/preview")
    assert "### Plan: FP8_BLOCK" in plan_md and "Ready to run" in plan_md
    assert (ignore, target, recent) == ("lm_head\nre:.*embed_tokens$", TARGET, [SOURCE])

    result_md, card_md = client.predict(SOURCE, "FP8_BLOCK", ignore, target, False, False, api_name="/quantize")
    assert result_md.startswith(f"### Done: [{TARGET}]({hub.endpoint}/{TARGET})")
    assert "base_model: bob/tiny-llama" in card_md
    assert "model.safetensors" in hub.list_files(TARGET)

    # The same job again: it finished, so the rerun says so with the same commit (issue 19).
    again_md, _ = client.predict(SOURCE, "FP8_BLOCK", ignore, target, False, False, api_name="/quantize")
    assert again_md.startswith(f"### Done: [{TARGET}]({hub.endpoint}/{TARGET})")
    assert len(hub.commits(TARGET)) == 2  # creation + the one job commit: no second commit

    # Another job on the same target, overwrite off: refused with the core's message, no trace, no token.
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as excinfo:
        client.predict(SOURCE, "FP8_BLOCK", ignore + "\nre:.*o_proj$", target, False, False, api_name="/quantize")
    message = str(excinfo.value)
    assert f"Target repo {TARGET} already holds" in message
    assert "Traceback" not in message and ALICE not in message


def test_running_space_api_refuses_paths(hub, space_url):
    """The public API routes (no sign-in needed) plan Hub repos only: a path never lists files."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(space_url, verbose=False)
    for path in ("/usr/lib", "~", "/", "../.."):
        plan_md, ignore, target, recent = client.predict(path, "FP8_BLOCK", [], api_name="/preview")
        assert "is a file-system path; only Hub repos can be quantized here" in plan_md, plan_md
        assert "Plan:" not in plan_md and target == "" and recent == []
        plan_md = client.predict(path, "FP8_BLOCK", "lm_head", api_name="/replan")
        assert "is a file-system path" in plan_md and "Plan:" not in plan_md
    signed_in = Client(space_url, oauth_token=ALICE, verbose=False)
    with pytest.raises(AppError, match="is a file-system path; only Hub repos can be quantized here"):
        signed_in.predict("/usr/lib", "FP8_BLOCK", "lm_head", "", False, False, api_name="/quantize")


def test_running_space_without_sign_in_says_so(hub, source, space_url):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(space_url, verbose=False)  # no oauth_token, no session cookie
    with pytest.raises(AppError, match=r"Sign in with Hugging Face first \(button at the top\)"):
        client.predict(SOURCE, "FP8_BLOCK", "lm_head", "", False, False, api_name="/quantize")
    assert not hub.repo_exists(TARGET)


def test_running_space_uses_hf_token_behind_the_local_sign_in_mock(hub, source, space_url):
    """Gradio's mocked "Sign in" stores a placeholder token in the session; the app uses HF_TOKEN."""
    from gradio_client import Client

    login = httpx.get(f"{space_url}/login/huggingface", follow_redirects=True)
    cookie = next(c for c in login.history[-1].headers.get_list("set-cookie") if c.startswith("session="))
    client = Client(space_url, headers={"Cookie": cookie.split(";")[0]}, verbose=False)
    result_md, _ = client.predict(SOURCE, "FP8_BLOCK", "lm_head", "", True, False, api_name="/quantize")
    assert result_md.startswith(f"### Done: [{TARGET}]")  # default target under HF_TOKEN's user
    assert hub.list_files(TARGET)
