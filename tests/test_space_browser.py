"""The Space in a real browser: headless Chromium (Debian's ``/usr/bin/chromium``) driven by Playwright.

It opens the locally running Space (``python space/app.py`` against the loopback Hub
server), tries to run without signing in, signs in through Gradio's local sign-in
mock, enters a model from the test server, reads the plan table, switches schemes,
runs FP8_BLOCK, watches the progress bar and follows the link to the new repo. A
screenshot of the finished page is saved as ``test-artifacts/space-finished.png``.

Chromium is never downloaded (``playwright install`` is not used). Without it the
test is skipped locally and fails in CI (``CI=true``), where the workflow runs
``apt-get install chromium`` first.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from conftest import import_tool, missing_tool
from factory import make_checkpoint
from test_space import ALICE, ROOT, SOURCE, TARGET, _repo_files, launch_space

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("PTQ_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOT = ARTIFACTS / "space-finished.png"


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium; skipped locally when missing, a failure in CI (``conftest.missing_tool``)."""
    sync_api = import_tool("playwright.sync_api", "the playwright Python package is not installed")
    if not CHROMIUM.exists():
        missing_tool(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-background-networking"],
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("browser") / "tiny-llama", "llama")


@pytest.fixture(scope="module")
def space_url(hub_server, tmp_path_factory):
    work = tmp_path_factory.mktemp("space-browser")
    with launch_space(hub_server.endpoint, work) as url:
        yield url
    assert ALICE not in (work / "space.log").read_text(), "the token leaked into the Space's log"


@pytest.fixture
def slow_upload(hub, monkeypatch):
    """Hold each upload request a moment so the progress bar can be seen."""
    handle = hub._handle

    def slowly(method, path, query, headers, body):
        if "/preupload/" in path:
            time.sleep(0.6)
        return handle(method, path, query, headers, body)

    monkeypatch.setattr(hub, "_handle", slowly)


def _enter_model(page, model_id: str) -> None:
    box = page.locator("#model-id input")
    box.click()
    box.fill("")
    box.press_sequentially(model_id, delay=20)
    box.press("Enter")


def _pick_scheme(page, name: str) -> None:
    page.locator("#scheme input").click()
    page.get_by_role("option", name=re.compile(rf"^{name} — ")).click()


def test_sign_in_plan_and_quantize_in_a_browser(browser, hub, checkpoint, space_url, slow_upload):
    from playwright.sync_api import expect

    hub.seed_repo(SOURCE, _repo_files(checkpoint))
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(space_url)

    # Not signed in: the plan works, the run says to sign in (no crash, no trace).
    expect(page.get_by_role("button", name=re.compile("Sign in with Hugging Face"))).to_be_visible(timeout=30_000)
    _enter_model(page, SOURCE)
    plan = page.locator("#plan")
    expect(plan).to_contain_text("Ready to run", timeout=60_000)
    page.locator("#run").click()
    expect(page.get_by_text("Sign in with Hugging Face first")).to_be_visible(timeout=30_000)
    assert not hub.repo_exists(TARGET)

    # Sign in (Gradio's local mock: the session holds alice, from HF_TOKEN).
    page.get_by_role("button", name=re.compile("Sign in with Hugging Face")).click()
    expect(page.get_by_role("button", name="Logout (alice)")).to_be_visible(timeout=30_000)

    # Pick the model: plan table, ignore list and target are filled in.
    _enter_model(page, SOURCE)
    expect(plan).to_contain_text("Plan: FP8_BLOCK", timeout=60_000)
    expect(plan.locator("table").first).to_contain_text("quantized: FP8_BLOCK (float-quantized)")
    expect(plan).to_contain_text("norm layer")
    expect(page.locator("#ignore textarea")).to_have_value("lm_head\nre:.*embed_tokens$")
    target = page.locator("#target input, #target textarea").first
    expect(target).to_have_value(TARGET)
    run = page.locator("#run")
    expect(run).to_be_enabled()

    # Another scheme re-plans and renames the default target; back to FP8_BLOCK.
    _pick_scheme(page, "W4A16")
    expect(plan).to_contain_text("Plan: W4A16", timeout=60_000)
    expect(target).to_have_value("alice/tiny-llama-W4A16")
    _pick_scheme(page, "FP8_BLOCK")
    expect(plan).to_contain_text("Plan: FP8_BLOCK", timeout=60_000)
    expect(target).to_have_value(TARGET)

    # Run: a progress bar through the stages, then the link and the model card.
    run.click()
    # A streamed job uploads shard by shard while it quantizes; the slowed pre-uploads keep
    # the upload or the final commit on screen long enough to see.
    expect(page.get_by_text(re.compile(r"Uploading \d|Committing")).first).to_be_visible(timeout=120_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "space-progress.png"))
    result = page.locator("#result")
    expect(result).to_contain_text(f"Done: {TARGET}", timeout=180_000)
    link = result.get_by_role("link", name=TARGET).first
    expect(link).to_have_attribute("href", f"{hub.endpoint}/{TARGET}")
    page.get_by_text("Model card of the new repo").click()
    expect(page.locator("#card")).to_contain_text("base_model: bob/tiny-llama")

    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000
    assert "model.safetensors" in hub.list_files(TARGET)
    assert errors == []
    page.close()


def test_a_path_typed_in_the_model_box_is_refused_on_the_page(browser, hub, checkpoint, space_url):
    """Without signing in, the model box plans Hub repos only: a path shows a refusal, never a listing."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(space_url)
    expect(page.get_by_role("button", name=re.compile("Sign in with Hugging Face"))).to_be_visible(timeout=30_000)
    plan = page.locator("#plan")
    box = page.locator("#model-id input")
    for path in ("/usr/lib", "~", str(checkpoint)):
        # Pasted, not typed: keys typed fast over a previous refusal can trip Gradio's dropdown script
        # ("Cannot read properties of undefined (reading '0')") while its suggestions are replaced.
        box.click()
        box.fill(path)
        box.press("Enter")
        expect(plan).to_contain_text("is a file-system path; only Hub repos can be quantized here", timeout=60_000)
        expect(plan).not_to_contain_text("Plan:")
        expect(page.locator("#run")).to_be_disabled()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "space-path-refused.png"))
    assert errors == []
    page.close()
