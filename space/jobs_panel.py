"""The Space's "Run on my account (Hugging Face Jobs)" panel: handlers first, then its layout.

The job runs in a container on the signed-in user's own account and credits
(``ptq_core.hf_jobs``), so a big model never holds the Space's one-job queue: launching
takes a second, and following a job's log is an event of its own (``concurrency_id``
``jobs-follow``, no limit), apart from the ``quantize`` queue. The user's recent jobs live
in their browser (``gr.BrowserState``): reopening the Space shows them again and follows
the newest. ``app.py`` calls ``add_jobs_panel`` once inside its ``gr.Blocks``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from ptq_core import hf_jobs, is_default_target
from ptq_core.errors import PtqError
from ptq_core.hubjob import ManyResult
from ptq_core.ignore_text import parse_ignore_text
from ptq_core.redact import redact

RECENT_JOBS = 5
"""Jobs the browser remembers."""

AUTO = hf_jobs.AUTO_FLAVOR
WHY_JOBS_SCOPE = (
    "Runs in a container on **your** Hugging Face account and credits ([Jobs](https://huggingface.co/docs/"
    "huggingface_hub/guides/jobs)), not in this Space: no queue, any model size the flavor's RAM allows. "
    "Signing in asks for the `jobs` permission for this; the job gets your token as a secret, to read the "
    "model and push the new repos. One job reads the model once and quantizes every scheme picked above "
    "(\"Also quantize into\" included), one repo each."
)
TokenFrom = Callable[[Any], "str | None"]


def form_request(model_id: str, scheme: str, also: list[str] | None, ignore_text: str, target: str | None,
                 private: bool, overwrite: bool, observer: str | None,
                 rotate: bool) -> tuple[list[str], dict[str, Any]]:
    """The form as ``make_jobs``' schemes and options: the one reading of it, here and in ``app.run_job``.

    ``also``: more schemes from the same read; with several, a default-looking target keeps only
    its namespace (``my-org/Model-FP8-BLOCK`` -> ``my-org/``), so each scheme gets its own
    default name where the user pointed the first one.
    """
    schemes = [scheme, *(s for s in (also or []) if s != scheme)]
    target = (target or "").strip()
    if len(schemes) > 1 and target and is_default_target(target, model_id):
        namespace, _, _ = target.rpartition("/")
        target = f"{namespace}/" if namespace else ""
    return schemes, {"ignore": parse_ignore_text(ignore_text), "default_ignore": False,  # the box holds the whole list
                     "observer": observer or None, "target": target or None, "private": bool(private),
                     "overwrite": bool(overwrite), "rotate": bool(rotate)}


def flavor_choices() -> list[tuple[str, str]]:
    """``auto`` (the plan's pick) and the short list, each with what it fits."""
    return [("auto: the one the plan says fits (by RAM)", AUTO),
            *((f"{name}: {text}", name) for name, text in hf_jobs.FLAVORS.items())]


def launch_on_jobs(token: str | None, model_id: str | None, scheme: str | list[str], options: dict[str, Any],
                   flavor: str, my_jobs: list[dict] | None) -> tuple[list[dict], str]:
    """Launch the form's job on the user's account; returns (recent jobs, status Markdown).

    Several schemes are one job: one read of the model, one repo each.

    Raises:
        gr.Error: not signed in, no model, or the core's refusal (no jobs permission, no credits...).
    """
    if token is None:
        raise gr.Error("Sign in first: the job runs on your account.", title="Not signed in", print_exception=False)
    model_id = (model_id or "").strip()
    if not model_id:
        raise gr.Error("Pick a model first: type a Hub id such as org/Model.", print_exception=False)
    try:
        flavor = hf_jobs.resolve_flavor(flavor, model_id, scheme, token=token, **options)
        job = hf_jobs.launch_hf_job(model_id, scheme, flavor=flavor, token=token, **options)
    except PtqError as err:
        raise gr.Error(redact(str(err), token), title="Job not launched", duration=None, print_exception=False) from None
    entry = {"id": job.id, "namespace": job.namespace, "url": job.url, "label": job.label, "flavor": job.flavor}
    recent = [entry, *[j for j in (my_jobs or []) if j.get("id") != job.id]][:RECENT_JOBS]
    return recent, _status(entry, "SCHEDULING", {})


def follow_latest_job(token: str | None, my_jobs: list[dict] | None) -> Iterator[str]:
    """Live status of the newest remembered job, from its log, until it ends (then its result table)."""
    if token is None or not my_jobs:
        yield ""
        return
    entry = my_jobs[0]
    events: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}

    def follow() -> None:
        try:
            outcome["result"] = hf_jobs.follow_hf_job(f"{entry['namespace']}/{entry['id']}", token=token,
                                                      progress=lambda *e: events.put(e))
        except PtqError as err:
            outcome["error"] = redact(str(err), token)
        finally:
            events.put(None)

    threading.Thread(target=follow, name=f"follow-{entry['id']}", daemon=True).start()
    stages: dict[str, tuple[int, int]] = {}
    yield _status(entry, "RUNNING", stages)
    while (event := events.get()) is not None:
        stages[event[0]] = (event[1], event[2])
        if events.empty():  # a burst of events is one refresh
            yield _status(entry, "RUNNING", stages)
    result = outcome.get("result")
    if result is not None:  # several schemes with one failed: the job ended in ERROR, the table says which
        failed = isinstance(result, ManyResult) and not result.ok
        stage = "ERROR (a scheme failed; run it again to finish it)" if failed else "COMPLETED"
        yield _status(entry, stage, stages) + "\n\n" + result.to_markdown()
    else:
        yield _status(entry, "ENDED", stages) + f"\n\n**The job did not finish.** {outcome.get('error', '')}"


def _status(entry: dict, stage: str, stages: dict[str, tuple[int, int]]) -> str:
    bars = " · ".join(f"{name} {100 * done // max(total, 1)}%" for name, (done, total) in stages.items())
    return (f"**[Job {entry['id']}]({entry['url']})** ({entry['label']}, {entry['flavor']}): {stage}"
            + (f"\n\n{bars}" if bars else ""))


def add_jobs_panel(demo: gr.Blocks, form: dict[str, Any], token_from: TokenFrom) -> None:
    """The panel's components and events, inside ``demo`` (the caller's open ``gr.Blocks``).

    ``form``: the main form's components (``model_id``, ``scheme``, ``also``, ``ignore``, ``target``,
    ``private``, ``overwrite``, ``observer``, ``rotate``); ``token_from``: the app's OAuth token -> Hub token rule.
    """
    with gr.Accordion("Run on my account (Hugging Face Jobs)", open=False):
        gr.Markdown(WHY_JOBS_SCOPE)
        flavor = gr.Dropdown(label="Hardware (flavor)", choices=flavor_choices(), value=AUTO, elem_id="jobs-flavor")
        launch = gr.Button("Launch on Hugging Face Jobs", elem_id="jobs-launch")
    status = gr.Markdown(elem_id="jobs-status")  # outside the accordion: a reopened tab shows it at once
    my_jobs = gr.BrowserState([], storage_key="ptq-hub-my-jobs")

    def on_launch(model_id, scheme, also, ignore, target, private, overwrite, observer, rotate, flavor_name, recent,
                  oauth_token: gr.OAuthToken | None):
        model_id = (model_id or "").strip()
        schemes, options = form_request(model_id, scheme, also, ignore, target, private, overwrite, observer, rotate)
        return launch_on_jobs(token_from(oauth_token), model_id, schemes, options, flavor_name, recent)

    def on_follow(recent, oauth_token: gr.OAuthToken | None):
        yield from follow_latest_job(token_from(oauth_token), recent)

    names = ("model_id", "scheme", "also", "ignore", "target", "private", "overwrite", "observer", "rotate")
    launched = launch.click(on_launch, [*(form[n] for n in names), flavor, my_jobs], [my_jobs, status],
                            concurrency_id="jobs-launch", concurrency_limit=4, api_name="launch_on_jobs")
    follow = {"concurrency_id": "jobs-follow", "concurrency_limit": None, "show_progress": "hidden"}
    launched.success(on_follow, [my_jobs], status, api_visibility="private", **follow)
    demo.load(on_follow, [my_jobs], status, api_visibility="private", **follow)  # a reopened tab follows again
