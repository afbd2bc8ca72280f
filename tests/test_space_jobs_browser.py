"""The Space's "Run on my account (Hugging Face Jobs)" panel in headless Chromium.

Signed in through Gradio's local mock, the page launches the job on the test Hub's Jobs API
(a real subprocess against the same server), shows its live status from the job's log and
its result table, and a reloaded page finds the job again in the browser's state. The
scheme and an "Also quantize into" scheme are one job; the first repo is compared with a
local run of the same request.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from factory import make_checkpoint
from test_space import SOURCE, TARGET, _repo_files
from test_space_browser import _enter_model, browser, space_url  # noqa: F401 - fixtures

import ptq_core

pytestmark = pytest.mark.browser
W4A16_TARGET = TARGET.replace("FP8-BLOCK", "W4A16")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("jobs-browser") / "tiny-llama", "llama")


def test_launch_on_jobs_from_the_page_and_find_it_again_after_a_reload(browser, hub, checkpoint, space_url, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    hub.seed_repo(SOURCE, _repo_files(checkpoint))
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(space_url)
    page.get_by_role("button", name=re.compile("Sign in with Hugging Face")).click()
    expect(page.get_by_role("button", name="Logout (alice)")).to_be_visible(timeout=30_000)
    _enter_model(page, SOURCE)
    expect(page.locator("#plan")).to_contain_text("Plan: FP8_BLOCK", timeout=60_000)

    # "Also quantize into" goes with the job too: one job, one read, a repo per scheme.
    page.locator("#also-schemes input").click()
    page.get_by_role("option", name=re.compile(r"^W4A16 — ")).click()
    page.keyboard.press("Escape")

    page.get_by_text("Run on my account (Hugging Face Jobs)").click()
    expect(page.get_by_text("`jobs` permission").or_(page.get_by_text("jobs permission"))).to_be_visible()
    page.locator("#jobs-launch").click()
    status = page.locator("#jobs-status")
    expect(status).to_contain_text("COMPLETED", timeout=180_000)
    (record,) = hub.jobs.launched
    expect(status.get_by_role("link", name=f"Job {record.id}")).to_have_attribute(
        "href", f"{hub.endpoint}/jobs/alice/{record.id}")
    for repo in (TARGET, W4A16_TARGET):
        expect(status.get_by_role("link", name=repo)).to_have_attribute("href", f"{hub.endpoint}/{repo}")

    # The same request run locally: the page sends its ignore box whole and its observer explicitly.
    local = tmp_path / "local"
    request = ptq_core.make_job(str(checkpoint), "FP8_BLOCK", ignore=["lm_head", "re:.*embed_tokens$"],
                                default_ignore=False, observer="memoryless_minmax")
    ptq_core.quantize_job(request, local)
    for path in local.iterdir():
        assert hub.read_file(TARGET, path.name) == path.read_bytes(), path.name

    page.reload()  # the tab comes back: the browser remembers the job, the page follows it again
    expect(page.locator("#jobs-status")).to_contain_text(f"Job {record.id}", timeout=60_000)
    expect(page.locator("#jobs-status")).to_contain_text("COMPLETED", timeout=60_000)
    assert len(hub.jobs.launched) == 1 and errors == []
    page.close()
