"""ptq-hub Space: sign in, pick a model and a scheme, get a quantized repo.

Handlers come first: plain functions that ``tests/test_space.py`` calls directly.
The ``gr.Blocks`` layout below them only wires components to handlers. A job is
exactly one ``ptq_core.quantize_to_hub`` call; a preview is one
``ptq_core.plan_hub_model`` call (safetensors headers only, no weight bytes).

Local run (against huggingface.co or any Hub-compatible server)::

    HF_TOKEN=hf_... [HF_ENDPOINT=http://127.0.0.1:8000] python space/app.py

Outside a Space, Gradio mocks "Sign in with Hugging Face": at start-up it asks
``whoami`` at ``HF_ENDPOINT`` with ``HF_TOKEN`` and, once the button is clicked,
hands handlers a placeholder token; this app swaps the placeholder for
``HF_TOKEN`` or the cached login (see ``_token_from``), so every Hub call uses a
real token.
"""

from __future__ import annotations

import argparse
import contextvars
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import ptq_core
except ImportError:  # `python space/app.py` in a checkout; on the Space, ptq_core/ sits next to app.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import ptq_core

from ptq_core import constants

sys.path.insert(0, str(Path(__file__).resolve().parent))  # jobs_panel.py sits next to app.py (tests load app by path)
from jobs_panel import add_jobs_panel, form_request  # noqa: E402


# --- the Space's own settings, read once (the core's are in ptq_core.constants) ---
def _env_int(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


QUEUE_MAX_SIZE: int = _env_int("PTQ_SPACE_QUEUE_SIZE", 8)
"""Jobs allowed to wait behind the running one; the next visitor is told the queue is full."""

GPU_SECONDS: int = _env_int("PTQ_SPACE_GPU_SECONDS", 900)
"""ZeroGPU time budget of one job (``spaces.GPU(duration=...)``)."""

ON_ZERO_GPU: bool = constants.parse_bool(os.environ.get("SPACES_ZERO_GPU"), name="SPACES_ZERO_GPU")
"""Set by Hugging Face on ZeroGPU hardware."""

spaces = None
if ON_ZERO_GPU:  # pragma: no cover - only on Hugging Face ZeroGPU hardware
    try:
        import spaces  # before torch is imported: ZeroGPU patches CUDA initialisation
    except ImportError:
        spaces = None

import gradio as gr
from gradio.utils import get_space

from ptq_core.constants import DEFAULT_SCHEME
from ptq_core.errors import PtqError
from ptq_core.ignore_text import parse_ignore_text
from ptq_core.redact import install_redaction, redact
from ptq_core.sizes import format_bytes
from ptq_core.stages import Stage

logger = logging.getLogger("ptq_space")

SEARCH_LIMIT = 10
RECENT_LIMIT = 20

# gradio/oauth.py `_get_mocked_oauth_info`: the access token handed to handlers when
# the sign-in is mocked (run outside a Space). It is not a Hub token.
_MOCK_OAUTH_TOKEN = "mock-oauth-token-for-local-dev"

NOT_SIGNED_IN = (
    "Sign in with Hugging Face first (button at the top). The quantized repo is created in your "
    "account with your own token; nothing was run."
)

_BAR: dict[Stage, tuple[float, float]] = {
    # stage: (start fraction, end fraction) of the page's one bar. A streamed job downloads,
    # quantizes and uploads at once; the bar shows the furthest point, which the uploads set last.
    Stage.VALIDATE: (0.00, 0.05),
    Stage.DOWNLOAD: (0.05, 0.85),
    Stage.QUANTIZE: (0.05, 0.85),
    Stage.WRITE: (0.05, 0.85),
    Stage.UPLOAD: (0.05, 0.92),
    Stage.STAGE: (0.92, 0.94),
    Stage.CARD: (0.94, 0.96),
    Stage.COMMIT: (0.96, 1.00),
}


# =============================================================================
# Handlers
# =============================================================================
def observer_choices() -> list[tuple[str, str]]:
    """``(label, value)`` for the observer dropdown: each data-free observer and what it buys."""
    from ptq_core.observers import describe_observer, list_observers

    by_effect: dict[str, str] = {}  # aliases compute the same thing: offer one name per computation
    for name in list_observers():
        by_effect.setdefault(describe_observer(name), name)
    return [(f"{name} — {effect}", name) for effect, name in by_effect.items()]


def scheme_choices() -> list[tuple[str, str]]:
    """``(label, value)`` for the scheme dropdown: the name and one line on GPUs, size, quality."""
    return [(f"{s.name} — {s.description}", s.name) for s in ptq_core.list_schemes()]


def search_models(query: str, recent: list[str] | None = None, oauth_token: gr.OAuthToken | None = None) -> list[str]:
    """Model ids matching ``query``: the Hub's search, then this browser's recent models.

    A Hub without ``/api/models?search=`` (or an unreachable one) only narrows the
    suggestions to recent models; typing a full id always works.
    """
    query = (query or "").strip()
    if len(query) < 2:
        return list(recent or [])[:SEARCH_LIMIT]
    found: list[str] = []
    try:
        from ptq_core.hubjob import search_models as hub_search

        found = hub_search(query, limit=SEARCH_LIMIT, token=_token_from(oauth_token))
    except Exception as err:  # noqa: BLE001 - suggestions are a convenience: never fail the page over them
        logger.info("Model search unavailable (%s); suggesting recent models only", type(err).__name__)
    needle = query.lower()
    found += [m for m in (recent or []) if needle in m.lower()]
    return list(dict.fromkeys(found))[:SEARCH_LIMIT]


def on_model_typed(recent: list[str] | None, key_up_data: gr.KeyUpData, oauth_token: gr.OAuthToken | None):
    """Key-up in the model box: refresh its suggestions."""
    query = key_up_data.input_value or ""
    choices = search_models(query, recent, oauth_token)
    if query.strip() and query.strip() not in choices:
        choices = [query.strip(), *choices]  # keep what was typed selectable
    return gr.Dropdown(choices=choices)


def preview_model(model_id: str | None, scheme: str, recent: list[str] | None, oauth_token: gr.OAuthToken | None):
    """A model was chosen: plan it from its headers, pre-fill the ignore list and the target.

    Returns:
        (plan Markdown, ignore text, target repo, run button, recent models)
    """
    model_id = (model_id or "").strip()
    recent = list(recent or [])
    if not model_id:
        return _pick_a_model(), "", "", gr.Button(interactive=False), recent
    token = _token_from(oauth_token)
    try:
        planned = ptq_core.plan_hub_model(model_id, scheme, token=token, hub_only=True)
    except PtqError as err:
        # Keep the loader-safe defaults in the box: a later scheme change re-plans with them.
        defaults = "\n".join(ptq_core.DEFAULT_IGNORE)
        return _refusal(model_id, scheme, err, token), defaults, "", gr.Button(interactive=False), recent
    ignore = ptq_core.suggest_ignore(planned.plan)
    recent = [model_id, *[m for m in recent if m != model_id]][:RECENT_LIMIT]
    text, ok = _plan_markdown(model_id, planned)
    return text, "\n".join(ignore), _default_target(model_id, scheme, token), gr.Button(interactive=ok), recent


def preview_plan(model_id: str | None, scheme: str, ignore_text: str, oauth_token: gr.OAuthToken | None):
    """The ignore list changed: plan again with it. Returns (plan Markdown, run button)."""
    model_id = (model_id or "").strip()
    if not model_id:
        return _pick_a_model(), gr.Button(interactive=False)
    token = _token_from(oauth_token)
    try:
        # The box holds the whole list (pre-filled with the defaults this model has), so it replaces them.
        planned = ptq_core.plan_hub_model(
            model_id, scheme, ignore=parse_ignore_text(ignore_text), default_ignore=False, token=token, hub_only=True
        )
    except PtqError as err:
        return _refusal(model_id, scheme, err, token), gr.Button(interactive=False)
    text, ok = _plan_markdown(model_id, planned)
    return text, gr.Button(interactive=ok)


def change_scheme(model_id: str | None, scheme: str, ignore_text: str, target: str, oauth_token: gr.OAuthToken | None):
    """The scheme changed: plan again; rename a default-looking target. Returns (plan, target, run button)."""
    text, button = preview_plan(model_id, scheme, ignore_text, oauth_token)
    model_id = (model_id or "").strip()
    if model_id and (not (target or "").strip() or ptq_core.is_default_target(target, model_id)):
        target = _default_target(model_id, scheme, _token_from(oauth_token))
    return text, target, button


def run_job(
    model_id: str | None,
    scheme: str,
    ignore_text: str,
    target: str | None,
    private: bool,
    overwrite: bool,
    oauth_token: gr.OAuthToken | None,
    progress=gr.Progress(),  # noqa: B008 - Gradio's idiom: the default marks the progress argument
    observer: str | None = None,
    rotate: bool = False,
    also: list[str] | None = None,
):
    """Quantize ``model_id`` and push it: one ``quantize_to_hub`` call in a per-job folder.

    ``observer``, ``rotate`` and ``also`` are the last inputs: Gradio inserts the sign-in and progress
    arguments at their positions, so an input declared after them still lines up. ``also``: more
    schemes from the same read (``quantize_many_to_hub``), one repo each under its default name.

    Returns:
        (result Markdown with the link, the new repo's model card, the card accordion)

    Raises:
        gr.Error: not signed in, no model, or the core's ``PtqError`` message
            (never a stack trace, never the token).
    """
    token = _token_from(oauth_token)
    if token is None:
        raise gr.Error(NOT_SIGNED_IN, title="Not signed in", print_exception=False)
    model_id = (model_id or "").strip()
    if not model_id:
        raise gr.Error("Pick a model first: type a Hub id such as org/Model.", print_exception=False)
    schemes, options = form_request(model_id, scheme, also, ignore_text, target, private, overwrite, observer, rotate)
    try:
        # hub_only: the typed text must be a Hub repo id; a path is refused before any file is touched.
        jobs = ptq_core.make_jobs(model_id, schemes, hub_only=True, **options)
    except PtqError as err:
        raise gr.Error(redact(str(err), token), title=_error_title(err), duration=None, print_exception=False) from None
    request = jobs[0]
    job = uuid.uuid4().hex[:8]
    work_dir = Path(tempfile.mkdtemp(prefix=f"ptq-space-{job}-", dir=_jobs_root()))
    logger.info(
        "job %s: %s -> %s as %s (private=%s, overwrite=%s)",
        job,
        request.source,
        request.target or "default",
        ",".join(j.scheme_name for j in jobs),
        request.private,
        request.overwrite,
    )
    try:
        result = _quantize(jobs if len(jobs) > 1 else request, token=token, work_dir=work_dir, progress=progress)
    except PtqError as err:
        message = redact(str(err), token)
        logger.warning("job %s failed: %s: %s", job, type(err).__name__, message)
        raise gr.Error(message, title=_error_title(err), duration=None, print_exception=False) from None
    except Exception as err:  # noqa: BLE001 - a bug, not a refusal: say so without a trace or the token
        logger.error("job %s crashed: %s: %s", job, type(err).__name__, redact(str(err), token))
        raise gr.Error(
            f"Unexpected {type(err).__name__} while quantizing {model_id}; nothing was pushed. "
            "Please retry, and report it if it happens again.",
            title="Job failed",
            duration=None,
            print_exception=False,
        ) from None
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    results = list(result.results.values()) if len(jobs) > 1 else [result]
    for one in results:
        logger.info("job %s: pushed %s at %s", job, one.repo_id, one.commit_sha[:10])
    if len(jobs) > 1 and not result.ok:
        pushed = ", ".join(r.repo_id for r in results) or "none"
        failed = "; ".join(f"{name}: {redact(str(err), token)}" for name, err in result.errors.items())
        raise gr.Error(f"Pushed: {pushed}. Failed: {failed}", title="Some schemes failed", duration=None,
                       print_exception=False)
    return ("\n\n".join(_result_markdown(r) for r in results), _card_markdown(results[0].card),
            gr.Accordion(visible=True, open=False))


def clear_result():
    """A new job starts: drop the previous job's link and card."""
    return "*Working… the link to the new repo appears here.*", gr.Accordion(visible=False)


def show_failure():
    """After a failed job: a lasting note next to the error pop-up."""
    return "**The job did not finish.** The reason is in the red message; temporary files were removed."


# --- handler helpers ---------------------------------------------------------
def _quantize(job: Any, *, progress: Any, **kwargs: Any):
    """The one core call, with progress forwarded to the page: a job, or several schemes from one read."""
    if isinstance(job, tuple):
        return ptq_core.quantize_many_to_hub(job, progress=_progress_reporter(progress), **kwargs)
    return ptq_core.quantize_to_hub(job, progress=_progress_reporter(progress), **kwargs)


if spaces is not None:  # pragma: no cover - ZeroGPU: a GPU is attached for the duration of each job
    _quantize = spaces.GPU(duration=GPU_SECONDS)(_quantize)
elif ON_ZERO_GPU:  # pragma: no cover
    logger.warning("SPACES_ZERO_GPU is set but the `spaces` package is missing; jobs run on CPU")


def _progress_reporter(progress: Any) -> Callable[[str, int, int], None]:
    """``progress(stage, done, total)`` for the core, drawn as one bar on the page.

    ``gr.Progress`` finds its job through context variables, which the core's worker
    threads (parallel downloads, shard workers) do not inherit; each update therefore
    runs in a copy of the handler's context, one at a time.
    """
    context = contextvars.copy_context()
    lock = threading.Lock()
    shown = [0.0]  # a streamed job's stages overlap: the bar shows the furthest point reached

    def report(stage: str, done: int, total: int) -> None:
        known = Stage.parse(stage)
        start, end = _BAR[known] if known is not None else (0.0, 1.0)
        label = known.label if known is not None else str(stage).capitalize()
        part = min(max(done / total, 0.0), 1.0) if total else 1.0
        if known is not None and known.counts_bytes:
            desc = f"{label} {format_bytes(done)} / {format_bytes(total)}"
        elif known is Stage.QUANTIZE:
            desc = f"{label} tensor {done}/{total}"
        else:
            desc = label
        with lock:
            shown[0] = max(shown[0], start + (end - start) * part)
            context.run(progress, shown[0], desc=desc)

    return report


def _token_from(oauth_token: gr.OAuthToken | None) -> str | None:
    """The Hub token of the signed-in user; ``HF_TOKEN`` stands in for Gradio's local mock."""
    if oauth_token is None or not oauth_token.token:
        return None
    if oauth_token.token == _MOCK_OAUTH_TOKEN and get_space() is None:
        return _local_token()
    return oauth_token.token


def _local_token() -> str | None:
    """The token Gradio's local sign-in mock stands for: ``HF_TOKEN``, then the cached login."""
    from ptq_core._http import resolve_token

    return resolve_token(None, required=False)


def _default_target(model_id: str, scheme: str, token: str | None) -> str:
    """``{user}/{Model}-{SCHEME}`` when signed in; empty (the placeholder explains) otherwise."""
    if token is None:
        return ""
    try:
        return ptq_core.default_target_repo(model_id, scheme, token=token)
    except PtqError as err:
        logger.info("No default target for %s: %s", model_id, type(err).__name__)
        return ""


def _jobs_root() -> Path:
    root = Path(constants.PTQ_HUB_CACHE) / "space-jobs"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _plan_markdown(model_id: str, planned: Any) -> tuple[str, bool]:
    """The plan table, the streamed job's disk and RAM against its budgets, and whether it can run.

    Jobs stream (tensors read over HTTP, each output shard uploaded then deleted), so a
    model larger than this Space's disk runs. Whether it fits is the core's verdict
    (``footprint.fits``): the job itself is refused by the same rule, in the same words.
    """
    plan, footprint = planned.plan, planned.footprint
    quantized = len(plan.quantized)
    head = f"**Source:** `{model_id}` · {quantized} tensor(s) to quantize · {len(plan.skipped)} not quantized"
    if not quantized:
        return (
            (
                f"{head}\n\n{planned.to_markdown()}\n**Nothing to quantize** with this scheme and ignore list: "
                "the new repo would be a copy. Shorten the ignore list or pick another model."
            ),
            False,
        )
    disk = (
        f"**Streamed:** at most {format_bytes(footprint.peak_disk)} of disk (budget {format_bytes(footprint.disk_budget)} "
        f"on this Space) and about {format_bytes(footprint.peak_ram)} of RAM at once, whatever the model's size "
        f"({format_bytes(plan.size_before)})."
    )
    if not footprint.fits:
        return (
            (
                f"{head}\n\n{planned.to_markdown()}\n**Too large for this Space, even streamed.** {disk} "
                f"{footprint.verdict} Run it on your own machine with `ptq run` or the GitHub Action."
            ),
            False,
        )
    return f"{head}\n\n{planned.to_markdown()}\n{disk} **Ready to run.**", True


def _refusal(model_id: str, scheme: str, err: PtqError, token: str | None) -> str:
    shown = model_id if len(model_id) <= 100 else f"{model_id[:60]}… ({len(model_id)} characters)"
    return f"**Cannot quantize `{shown}` with {scheme}.** {redact(str(err), token)}"


def _pick_a_model() -> str:
    return "*Type a model id (e.g. `org/Model`) and press Enter, or pick a suggestion, to see the plan.*"


def _result_markdown(result: Any) -> str:
    return (
        f"### Done: [{result.repo_id}]({result.repo_url})\n\n"
        f"{result.ratio:.2f}x smaller. The model card is below.\n\n{result.to_markdown()}"
    )


_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.DOTALL)


def _card_markdown(card: str) -> str:
    """The card as the Hub renders it: YAML metadata as a block, then the body."""
    match = _FRONT_MATTER.match(card or "")
    if not match:
        return card or ""
    return f"```yaml\n{match.group(1)}\n```\n\n{card[match.end() :]}"


def _error_title(err: PtqError) -> str:
    words = re.sub(r"(?<!^)(?=[A-Z])", " ", type(err).__name__.removesuffix("Error")).strip()
    return words.capitalize() if words else "Error"


# =============================================================================
# Layout: components and wiring only
# =============================================================================
INTRO = """\
# ptq-hub: quantize a Hub model, data-free
Pick a model and a scheme: the plan below is read from the safetensors headers only.
One click streams the model (never the whole of it on disk), quantizes it into the
[compressed-tensors](https://github.com/neuralmagic/compressed-tensors) format (loads in vLLM and
transformers), writes a model card and pushes a **new repo in your account**. No calibration data.
Sources quantized already (FP8 blocks, compressed-tensors, ModelOpt NVFP4, AWQ) are dequantized in
memory first; the plan says so.
"""

CSS = """
#plan table, #result table { font-size: 0.9em; }
"""


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="ptq-hub: quantize a Hub model") as demo:
        gr.Markdown(INTRO)
        gr.LoginButton()
        recent = gr.BrowserState([], storage_key="ptq-hub-recent-models")
        with gr.Row():
            model_id = gr.Dropdown(
                label="Model on the Hub",
                info="Type to search, then press Enter or pick a suggestion.",
                choices=[],
                value=None,
                allow_custom_value=True,
                filterable=True,
                scale=2,
                elem_id="model-id",
            )
            scheme = gr.Dropdown(
                label="Scheme",
                info="Which GPUs run it, how much smaller, how close to the original.",
                choices=scheme_choices(),
                value=DEFAULT_SCHEME,
                scale=3,
                elem_id="scheme",
            )
        plan_md = gr.Markdown(_pick_a_model(), elem_id="plan")
        with gr.Accordion("Options", open=True):
            ignore = gr.Textbox(
                label="Keep unquantized (ignore list)",
                info="One module name or `re:<regex>` per line. Pre-filled with the loader-safe "
                "defaults found in this model (lm_head, embeddings, MoE routers).",
                lines=3,
                elem_id="ignore",
            )
            target = gr.Textbox(
                label="Target repo",
                placeholder="your-name/Model-FP8-BLOCK (sign in to pre-fill)",
                elem_id="target",
            )
            observer = gr.Dropdown(
                label="Weight observer",
                info="How the scales are chosen: min/max is instant; an MSE search lowers the error, takes longer.",
                choices=observer_choices(),
                value="memoryless_minmax",
                elem_id="observer",
            )
            also = gr.Dropdown(
                label="Also quantize into (the same download)",
                info="More schemes from one read of the model: one repo each, named {model}-{SCHEME}.",
                choices=scheme_choices(),
                value=[],
                multiselect=True,
                elem_id="also-schemes",
            )
            rotate = gr.Checkbox(
                label="Rotate the weights first (SpinQuant R1+R2)",
                info="Hadamard rotations fused into the weights: the same model with fewer outliers, "
                     "usually better at 4 bits (W4A16, NVFP4A16, MXFP4A16).",
                value=False,
                elem_id="rotate",
            )
            with gr.Row():
                private = gr.Checkbox(label="Private repo", value=False, elem_id="private")
                overwrite = gr.Checkbox(
                    label="Overwrite the target repo if it already exists",
                    info="Off: an existing repo with files is refused.",
                    value=False,
                    elem_id="overwrite",
                )
        run = gr.Button("Quantize and push", variant="primary", interactive=False, elem_id="run")
        result_md = gr.Markdown("*The link to the new repo appears here.*", min_height=90, elem_id="result")
        with gr.Accordion("Model card of the new repo", open=False, visible=False) as card_box:
            card_md = gr.Markdown(elem_id="card")

        previews = {"concurrency_limit": 4, "concurrency_id": "preview"}
        model_id.key_up(
            on_model_typed,
            [recent],
            model_id,
            trigger_mode="always_last",
            show_progress="hidden",
            api_visibility="private",
            **previews,
        )
        model_id.change(
            preview_model,
            [model_id, scheme, recent],
            [plan_md, ignore, target, run, recent],
            api_name="preview",
            **previews,
        )
        scheme.change(
            change_scheme,
            [model_id, scheme, ignore, target],
            [plan_md, target, run],
            api_name="change_scheme",
            **previews,
        )
        ignore.blur(preview_plan, [model_id, scheme, ignore], [plan_md, run], api_name="replan", **previews)
        ignore.submit(preview_plan, [model_id, scheme, ignore], [plan_md, run], api_visibility="private", **previews)
        job = run.click(clear_result, None, [result_md, card_box], queue=False, api_visibility="private").then(
            run_job,
            [model_id, scheme, ignore, target, private, overwrite, observer, rotate, also],
            [result_md, card_md, card_box],
            concurrency_limit=1,
            concurrency_id="quantize",
            show_progress="full",
            api_name="quantize",
        )
        job.failure(show_failure, None, result_md, queue=False, api_visibility="private")
        form = {"model_id": model_id, "scheme": scheme, "also": also, "ignore": ignore, "target": target,
                "private": private, "overwrite": overwrite, "observer": observer, "rotate": rotate}
        add_jobs_panel(demo, form, _token_from)
    # One job at a time (a Space has one disk and one GPU); a bounded line behind it.
    demo.queue(default_concurrency_limit=1, max_size=QUEUE_MAX_SIZE)
    return demo


def __getattr__(name: str) -> Any:
    # `demo` is built on first use, not at import: building a Blocks with a LoginButton
    # outside a Space already asks whoami for the local sign-in mock (gradio 6), and the
    # handlers must stay importable without a token (tests, tooling).
    if name == "demo":
        globals()["demo"] = value = build_demo()
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the ptq-hub Space locally.")
    parser.add_argument("--host", default=None, help="default: GRADIO_SERVER_NAME or 127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: GRADIO_SERVER_PORT or 7860")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2"):  # one line per HTTP request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    install_redaction()  # users' tokens (OAuth) must not reach the Space's logs in any form
    if get_space() is None and _local_token() is None:
        # Gradio's local sign-in mock asks whoami with this token at start-up and fails without it.
        parser.exit(2, "Set HF_TOKEN (or run `hf auth login`) to run the Space locally: sign-in is mocked with it.\n")
    build_demo().launch(server_name=args.host, server_port=args.port, ssr_mode=False, css=CSS)


if __name__ == "__main__":
    main()
